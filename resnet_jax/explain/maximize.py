"""Activation maximisation: gradient ascent on the input, compiled and batched.

    from resnet_jax.explain import maximize, objectives as obj
    imgs = maximize(model, variables, obj.channel("conv2", range(16)), steps=200)
    imgs = maximize(model, variables, obj.class_logit(range(10)) - 0.05 * obj.l1())

The whole optimisation - parameterisation -> image -> random transforms -> normalisation
-> model -> objective, its gradient, the optax update and the projection - is one
``lax.scan`` inside one ``jax.jit``: no Python runs per step. The model is traced with
the CPU-fast ops (``resnet_jax.ops.cpu_fast``), whose gradients XLA:CPU compiles well
inside a loop. A batch of units (one per image) is optimised together, each image
receiving the gradient of its own objective.

Dead ReLUs: for the first ``redirect_relu_steps`` steps every ReLU uses Lucid's
redirected gradient (``model.clone(act=relu.redirected_relu)``), so units that start
switched off still receive a signal; the remaining steps use the true gradient.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import imagenet, ops, xla_cpu
from ..errors import ResNetJaxError
from ..models.registry import tapped_outputs
from .images import expected_hw
from .objectives import Objective
from .param import Param, get_param
from .relu import redirected_relu
from .taps import layer_shapes, model_variables
from .transforms import compose, standard_transforms


def default_normalization(model):
    """ImageNet mean/std for RGB ImageNet-stem ResNets, none (images in [0, 1]) otherwise."""
    from ..models import ResNet

    if isinstance(model, ResNet) and model.in_channels == 3 and model.stem == "imagenet":
        return imagenet.MEAN, imagenet.STD
    return None


def _image_hw(model, image_size, preprocess=None):
    """The (H, W) to optimise: ``image_size``, else the stored preprocessing's, else the
    model's usual size; an error when the model takes one size only and that differs."""
    from ..models import input_shape

    sizes = None
    if image_size is not None:
        sizes = tuple(np.broadcast_to(np.asarray(image_size), 2).tolist())
        if not all(float(s) == int(s) and int(s) > 0 for s in sizes):
            raise ResNetJaxError(f"image size must be a positive whole number of pixels, "
                                 f"got {image_size}")
        sizes = tuple(int(s) for s in sizes)
    fixed = expected_hw(model)
    if fixed is not None and preprocess is not None:
        fixed = (preprocess.image_size, preprocess.image_size)
    if fixed is not None:
        if sizes is not None and sizes != tuple(fixed):
            raise ResNetJaxError(
                f"this model takes {fixed[0]}x{fixed[1]} images only (its dense layer is "
                f"sized for them), got image size {image_size}; leave the size out or give "
                f"{fixed[0]}")
        return tuple(fixed)
    if sizes is not None:
        return sizes
    if preprocess is not None:
        return (preprocess.image_size, preprocess.image_size)
    return tuple(input_shape(model)[1:3])


def _transforms(model, transforms, hw, shape, rgb_imagenet: bool):
    """The composed random transforms; for a model that takes one size only, a final
    resize brings what a padding transform enlarged back to that size."""
    from .transforms import resize

    if isinstance(transforms, str):
        if transforms == "auto":
            transforms = (standard_transforms(224 if min(hw) < 224 else None)
                          if rgb_imagenet else [])
        elif transforms == "standard":
            transforms = standard_transforms()
        elif transforms == "none":
            transforms = []
        else:
            raise ResNetJaxError(f"unknown transforms {transforms!r}; use 'auto', "
                                 "'standard', 'none' or a list")
    transforms = list(transforms or [])
    if transforms and expected_hw(model) is not None:
        out = jax.eval_shape(compose(transforms), jax.random.key(0),
                             jax.ShapeDtypeStruct(shape, jnp.float32)).shape
        if tuple(out[1:3]) != tuple(hw):
            transforms.append(resize(tuple(hw)))
    return compose(transforms)


def _normalization(model, normalize, preprocess):
    if preprocess is None:
        return default_normalization(model) if normalize == "auto" else normalize
    if not (isinstance(normalize, str) and normalize == "auto"):
        raise ResNetJaxError("give either preprocess= (which holds the normalisation) or "
                             "normalize=, not both")
    return tuple(preprocess.mean), tuple(preprocess.std)


@dataclasses.dataclass(frozen=True)
class _Problem:
    """What one run optimises: ``param``'s images of ``shape`` (B, H, W, C), seen by the
    model through the random ``transforms`` and the normalisation ``norm`` (or none)."""

    objective: Objective
    param: Param
    shape: tuple[int, int, int, int]
    transforms: Callable
    norm: tuple | None

    @property
    def hw(self) -> tuple[int, int]:
        return self.shape[1:3]

    def loss(self, model, params, variables, key):
        """(-sum of the objective, the objective per image) of the images ``params`` make."""
        img = self.param.image(params, self.hw)
        x = self.transforms(key, img)
        if self.norm is not None:
            x = (x - jnp.asarray(self.norm[0], x.dtype)) / jnp.asarray(self.norm[1], x.dtype)
        _, acts = tapped_outputs(model, variables, x)
        values = self.objective(acts, img)
        return -jnp.sum(values), values


def _problem(model, objective, batch, image_size, param, transforms, normalize,
             preprocess) -> _Problem:
    if not isinstance(objective, Objective):
        raise ResNetJaxError(f"objective must be an Objective, got {type(objective).__name__}")
    if objective.batch is not None and batch is not None and batch != objective.batch:
        raise ResNetJaxError(f"the objective covers {objective.batch} images, batch={batch}")
    hw = _image_hw(model, image_size, preprocess)
    c = int(getattr(model, "in_channels", 3))
    shape = (batch or objective.batch or 1, hw[0], hw[1], c)
    p = get_param(param if param is not None else ("fourier" if c == 3 else "box"))
    rgb_imagenet = default_normalization(model) is not None
    return _Problem(objective, p, shape, _transforms(model, transforms, hw, shape, rgb_imagenet),
                    _normalization(model, normalize, preprocess))


def _snapshot_slots(snapshots, steps: int) -> np.ndarray | None:
    """(steps,) int32: the snapshot slot written after update i + 1 (-1: none)."""
    if snapshots is None:
        return None
    at = [int(s) for s in snapshots]
    bad = [s for s in at if not 0 <= s <= steps]
    if bad or not at or len(set(at)) != len(at):
        raise ResNetJaxError(f"snapshot steps must be distinct whole numbers in 0..{steps} "
                             f"(0: the starting image), got {list(snapshots)}")
    slots = np.full(steps, -1, np.int32)
    for k, s in enumerate(at):
        if s > 0:
            slots[s - 1] = k
    return slots


def _keep_snapshot(problem: _Problem, slots, snaps, params, i):
    """``snaps`` with the image of ``params`` written to slot ``slots[i]`` if it has one."""
    slot = jnp.asarray(slots)[i]

    def write(s):
        img = problem.param.image(params, problem.hw)
        return jax.lax.dynamic_update_index_in_dim(s, img.astype(s.dtype), slot, 0)

    return jax.lax.cond(slot >= 0, write, lambda s: s, snaps)


def _segment(model, problem: _Problem, opt: optax.GradientTransformation, slots=None):
    """``segment(carry, variables, key, first, n, redirected, unroll)``: steps ``first`` ..
    ``first + n - 1`` as one ``lax.scan`` -> (carry, objective per step (n, B)). The carry
    is (params, optimiser state, snapshots or None); ``slots`` says which steps' images
    the snapshots keep.

    The model is traced with the CPU-fast ops (``ops.cpu_fast``: XLA:CPU compiles JAX's
    own convolution gradients inside a loop body as naive loops) and, while
    ``redirected``, with Lucid's redirected ReLU gradient."""
    models = {False: ops.cpu_fast(model),
              True: ops.cpu_fast(model.clone(act=redirected_relu))}

    def segment(carry, variables, key, first: int, n: int, redirected: bool, unroll=1):
        loss = functools.partial(problem.loss, models[redirected])
        variables = model_variables(variables)

        def step(carry, i):
            params, opt_state, snaps = carry
            g, values = jax.grad(loss, has_aux=True)(params, variables, jax.random.fold_in(key, i))
            updates, opt_state = opt.update(g, opt_state, params)
            params = problem.param.project(optax.apply_updates(params, updates))
            if snaps is not None:
                snaps = _keep_snapshot(problem, slots, snaps, params, i)
            return (params, opt_state, snaps), values

        return jax.lax.scan(step, carry, first + jnp.arange(n), unroll=unroll)

    return segment


def make_maximizer(model, objective: Objective, steps: int = 256, *, batch: int | None = None,
                   image_size=None, param: str | Param | None = None,
                   transforms: str | Sequence | None = "auto", lr: float = 0.05,
                   optimizer: optax.GradientTransformation | None = None,
                   redirect_relu_steps: int = 16, normalize="auto", chunk: int | None = None,
                   preprocess=None, snapshots: Sequence[int] | None = None):
    """The compiled program ``run(variables, key) -> (images, values)``.

    ``images``: (B, H, W, C) in [0, 1]; ``values``: (steps, B) objective per step.
    With ``snapshots`` (step numbers, 0 the starting image), ``run`` also returns the
    images after those steps, (S, B, H, W, C), kept inside the compiled loop.
    The images are pixels in [0, 1]; the model sees them normalised with ``preprocess``'s
    mean and std (a ``Preprocessing``, e.g. ``load_model(dir).preprocess``; it also sets
    the default size), else with ``normalize``, so an L1 prior pulls pixels towards 0, the
    data's "no ink", whatever the model's normalisation.
    Call it again (new key, new variables of the same shapes) without recompiling.

    By default all steps are one ``lax.scan`` in one program, the model traced with the
    CPU-fast ops (``resnet_jax.ops.cpu_fast``), whose gradients XLA:CPU compiles well
    inside a loop. With ``chunk=k`` the program runs k steps unrolled and is called
    ceil(steps / k) times instead (the state stays on the device; same results), at the
    price of a longer compilation.
    """
    problem = _problem(model, objective, batch, image_size, param, transforms, normalize,
                       preprocess)
    opt = optimizer or optax.adam(lr)
    steps = int(steps)
    redirect = max(0, min(int(redirect_relu_steps), steps))
    phases = [ph for ph in [(0, redirect, True), (redirect, steps - redirect, False)]
              if ph[1] > 0]
    slots = _snapshot_slots(snapshots, steps)
    segment = _segment(model, problem, opt, slots)
    at = [] if slots is None else [int(s) for s in snapshots]

    def start(variables, key):
        k_init, k_steps = jax.random.split(key)
        params = problem.param.init(k_init, problem.shape)
        snaps = None
        if slots is not None:
            snaps = jnp.zeros((len(at), *problem.shape), jnp.float32)
            if 0 in at:  # the starting image
                snaps = snaps.at[at.index(0)].set(problem.param.image(params, problem.hw))
        return (params, opt.init(params), snaps), k_steps

    if chunk:
        return _chunked(problem, start, segment, phases, int(chunk))

    def run(variables, key):
        carry, k_steps = start(variables, key)
        history = []
        for first, n, redirected in phases:
            carry, h = segment(carry, variables, k_steps, first, n, redirected)
            history.append(h)
        return _finish(problem, carry, history)

    return xla_cpu.inference_jit(run)


def _finish(problem: _Problem, carry, history):
    """(images, values per step[, snapshots]) from the last carry."""
    out = (problem.param.image(carry[0], problem.hw), _concat(history, problem))
    return out if carry[2] is None else (*out, carry[2])


def _concat(history, problem: _Problem):
    return jnp.concatenate(history) if history else jnp.zeros((0, problem.shape[0]))


def _chunked(problem: _Problem, start, segment, phases, chunk: int):
    """``run`` as programs of ``chunk`` unrolled steps (no XLA while loop inside), called
    in turn; the carry stays on the device between calls."""
    start_jit = jax.jit(start)
    finish_jit = jax.jit(lambda carry, history: _finish(problem, carry, history))
    programs = {}

    def program(n, redirected):
        if (n, redirected) not in programs:
            programs[n, redirected] = xla_cpu.inference_jit(
                lambda c, v, k, first: segment(c, v, k, first, n, redirected, unroll=True))
        return programs[n, redirected]

    def run_chunked(variables, key):
        carry, k_steps = start_jit(variables, key)
        history = []
        for first, n, redirected in phases:
            for done in range(0, n, chunk):
                m = min(chunk, n - done)
                carry, h = program(m, redirected)(carry, variables, k_steps, first + done)
                history.append(h)
        return finish_jit(carry, history)

    return run_chunked


def check_objective(model, variables, objective: Objective, image_size=None, preprocess=None):
    """Raise a ResNetJaxError listing the valid names if the objective reads unknown ones,
    or a unit index out of range."""
    hw = _image_hw(model, image_size, preprocess)
    shapes = layer_shapes(model, variables, (1, hw[0], hw[1], model.in_channels))
    objective.check(shapes)


def maximize(model, variables, objective: Objective, steps: int = 256, *, seed: int = 0,
             return_values: bool = False, **options):
    """Images that maximise ``objective``: (B, H, W, C) numpy in [0, 1].

    Options (see ``make_maximizer``): ``batch`` (default: the objective's number of
    units), ``image_size``, ``param`` ("fourier" (default for RGB), "pixel", "box"
    (default for grayscale: raw pixels in [0, 1]) or a ``Param``), ``transforms``
    ("auto": Lucent's standard set for ImageNet models, none otherwise; "standard";
    "none"; or a list), ``lr`` / ``optimizer`` (Adam 0.05), ``redirect_relu_steps`` (16),
    ``normalize`` ("auto": ImageNet mean/std for ImageNet ResNets; None; or (mean, std)),
    ``preprocess`` (a ``Preprocessing``: its mean/std and size; replaces "auto").
    With ``return_values`` also returns the objective per step, (steps, B); with
    ``snapshots`` (step numbers, 0 the start), last, the images after those steps,
    (S, B, H, W, C) (``save_snapshot_strip`` draws them).
    """
    check_objective(model, variables, objective, options.get("image_size"),
                    options.get("preprocess"))
    run = make_maximizer(model, objective, steps, **options)
    images, values, *snaps = run(model_variables(variables), jax.random.key(seed))
    out = (np.asarray(images),) + ((np.asarray(values),) if return_values else ()) + tuple(
        np.asarray(s) for s in snaps)
    return out if len(out) > 1 else out[0]


def save_snapshot_strip(path, snapshots, steps: Sequence[int], title: str | None = None,
                        scale: int | None = None):
    """Write ``snapshots`` (S, B, H, W, C) taken after ``steps`` as a PNG: one row per
    image of the batch, its S stages left to right, "step s" under each (never on it),
    small images enlarged with nearest-neighbour."""
    from ..viz.overlays import save_grid

    snaps = np.asarray(snapshots)
    steps = [int(s) for s in steps]
    if snaps.ndim != 5 or snaps.shape[0] != len(steps):
        raise ResNetJaxError(f"snapshots must be (S, B, H, W, C) with S = {len(steps)} "
                             f"steps, got shape {snaps.shape}")
    tiles = [snaps[k, b] for b in range(snaps.shape[1]) for k in range(len(steps))]
    labels = [f"step {s}" for _ in range(snaps.shape[1]) for s in steps]
    return save_grid(path, tiles, labels, ncols=len(steps), title=title, scale=scale)


def evaluate(model, variables, objective: Objective, images, normalize="auto",
             preprocess=None) -> np.ndarray:
    """The objective of ``images`` (in [0, 1], no transforms): (B,)."""
    x = jnp.asarray(images, jnp.float32)
    norm = _normalization(model, normalize, preprocess)
    xin = x if norm is None else (x - jnp.asarray(norm[0])) / jnp.asarray(norm[1])
    _, acts = tapped_outputs(model, variables, xin)
    return np.asarray(objective(acts, x))


def dead_units(model, variables, objective: Objective, images, normalize="auto",
               preprocess=None) -> np.ndarray:
    """(B,) bool: the units that ``images`` (in [0, 1]) leave switched off - objective <= 0
    and no gradient reaching the image - so their maximised image is only the start noise."""
    norm = _normalization(model, normalize, preprocess)
    v = model_variables(variables)

    def total(x):
        xin = x if norm is None else (x - jnp.asarray(norm[0])) / jnp.asarray(norm[1])
        _, acts = tapped_outputs(model, v, xin)
        values = objective(acts, x)
        return jnp.sum(values), values

    g, values = jax.grad(total, has_aux=True)(jnp.asarray(images, jnp.float32))
    flat = np.abs(np.asarray(g)).reshape(len(images), -1).max(axis=1)
    return (np.asarray(values) <= 0) & (flat == 0)
