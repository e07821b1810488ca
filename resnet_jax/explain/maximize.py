"""Activation maximisation: gradient ascent on the input, compiled and batched.

    from resnet_jax.explain import maximize, objectives as obj
    imgs = maximize(model, variables, obj.channel("conv2", range(16)), steps=200)
    imgs = maximize(model, variables, obj.class_logit(range(10)) - 0.05 * obj.l1())

The whole optimisation - parameterisation -> image -> random transforms -> normalisation
-> model -> objective, its gradient, the optax update and the projection - is one
``lax.scan`` inside one ``jax.jit``: no Python runs per step. The model's convolution
gradients are traced in the layout XLA:CPU compiles fastest inside loops
(``resnet_jax.models.loop_friendly_gradients``). A batch of units (one per
image) is optimised together, each image receiving the gradient of its own objective.

Dead ReLUs: for the first ``redirect_relu_steps`` steps every ReLU uses Lucid's
redirected gradient (``relu.redirected_relu``), so units that start switched off still
receive a signal; the remaining steps use the true gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import imagenet, xla_cpu
from ..errors import ResNetJaxError
from ..models.autodiff import loop_friendly_gradients
from .images import expected_hw
from .objectives import Objective
from .param import Param, get_param
from .relu import redirected_relu, relu_variant
from .taps import apply_with_taps, layer_shapes, model_variables
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


def make_maximizer(model, objective: Objective, steps: int = 256, *, batch: int | None = None,
                   image_size=None, param: str | Param | None = None,
                   transforms: str | Sequence | None = "auto", lr: float = 0.05,
                   optimizer: optax.GradientTransformation | None = None,
                   redirect_relu_steps: int = 16, normalize="auto", chunk: int | None = None,
                   preprocess=None):
    """The compiled program ``run(variables, key) -> (images, values)``.

    ``images``: (B, H, W, C) in [0, 1]; ``values``: (steps, B) objective per step.
    The images are pixels in [0, 1]; the model sees them normalised with ``preprocess``'s
    mean and std (a ``Preprocessing``, e.g. ``load_model(dir).preprocess``; it also sets
    the default size), else with ``normalize``, so an L1 prior pulls pixels towards 0, the
    data's "no ink", whatever the model's normalisation.
    Call it again (new key, new variables of the same shapes) without recompiling.

    By default all steps are one ``lax.scan`` in one program. The model is traced with
    ``resnet_jax.models.loop_friendly_gradients()``: XLA:CPU compiles JAX's own
    convolution gradients inside a loop body as naive loops (measured here: resnet50
    steps ran 4-5x slower inside the scan than outside it). With ``chunk=k`` the program
    runs k steps unrolled and is called ceil(steps / k) times instead (the state stays on
    the device; same results), at the price of a longer compilation.
    """
    if not isinstance(objective, Objective):
        raise ResNetJaxError(f"objective must be an Objective, got {type(objective).__name__}")
    hw = _image_hw(model, image_size, preprocess)
    b = batch or objective.batch or 1
    if objective.batch is not None and batch is not None and batch != objective.batch:
        raise ResNetJaxError(f"the objective covers {objective.batch} images, batch={batch}")
    c = int(getattr(model, "in_channels", 3))
    rgb_imagenet = default_normalization(model) is not None
    p = get_param(param if param is not None else ("fourier" if c == 3 else "box"))
    shape = (b, hw[0], hw[1], c)
    tf = _transforms(model, transforms, hw, shape, rgb_imagenet)
    norm = _normalization(model, normalize, preprocess)
    opt = optimizer or optax.adam(lr)
    steps = int(steps)
    redirect = max(0, min(int(redirect_relu_steps), steps))

    def loss(params, variables, key):
        img = p.image(params, hw)
        x = tf(key, img)
        if norm is not None:
            x = (x - jnp.asarray(norm[0], x.dtype)) / jnp.asarray(norm[1], x.dtype)
        _, acts = apply_with_taps(model, variables, x)
        values = objective(acts, img)
        return -jnp.sum(values), values

    def make_step(variables, key):
        # A new function object per scan, so the redirected and the true gradient are
        # traced separately.
        def step(carry, i):
            params, opt_state = carry
            g, values = jax.grad(loss, has_aux=True)(params, variables, jax.random.fold_in(key, i))
            updates, opt_state = opt.update(g, opt_state, params)
            params = p.project(optax.apply_updates(params, updates))
            return (params, opt_state), values

        return step

    def start(variables, key):
        k_init, k_steps = jax.random.split(key)
        params = p.init(k_init, shape)
        return (params, opt.init(params)), k_steps

    def segment(carry, variables, k_steps, first: int, n: int, redirected: bool, unroll=1):
        """Steps first .. first + n - 1 as one scan."""
        variables = model_variables(variables)
        idx = first + jnp.arange(n)
        with loop_friendly_gradients(), relu_variant(redirected_relu if redirected else None):
            return jax.lax.scan(make_step(variables, k_steps), carry, idx, unroll=unroll)

    phases = [(0, redirect, True), (redirect, steps - redirect, False)]
    phases = [ph for ph in phases if ph[1] > 0]

    if not chunk:
        def run(variables, key):
            carry, k_steps = start(variables, key)
            history = []
            for first, n, redirected in phases:
                carry, h = segment(carry, variables, k_steps, first, n, redirected)
                history.append(h)
            values = jnp.concatenate(history) if history else jnp.zeros((0, b))
            return p.image(carry[0], hw), values

        return xla_cpu.inference_jit(run)

    # Chunked: each call runs ``chunk`` steps unrolled (no XLA while loop inside), the
    # carry stays on the device between calls.
    start_jit = jax.jit(start)
    finish_jit = jax.jit(lambda carry: p.image(carry[0], hw))
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
            done = 0
            while done < n:
                m = min(chunk, n - done)
                carry, h = program(m, redirected)(carry, variables, k_steps, first + done)
                history.append(h)
                done += m
        values = jnp.concatenate(history) if history else jnp.zeros((0, b))
        return finish_jit(carry), values

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
    With ``return_values`` also returns the objective per step, (steps, B).
    """
    check_objective(model, variables, objective, options.get("image_size"),
                    options.get("preprocess"))
    run = make_maximizer(model, objective, steps, **options)
    images, values = run(model_variables(variables), jax.random.key(seed))
    images = np.asarray(images)
    return (images, np.asarray(values)) if return_values else images


def evaluate(model, variables, objective: Objective, images, normalize="auto",
             preprocess=None) -> np.ndarray:
    """The objective of ``images`` (in [0, 1], no transforms): (B,)."""
    x = jnp.asarray(images, jnp.float32)
    norm = _normalization(model, normalize, preprocess)
    xin = x if norm is None else (x - jnp.asarray(norm[0])) / jnp.asarray(norm[1])
    _, acts = apply_with_taps(model, variables, xin)
    return np.asarray(objective(acts, x))


def dead_units(model, variables, objective: Objective, images, normalize="auto",
               preprocess=None) -> np.ndarray:
    """(B,) bool: the units that ``images`` (in [0, 1]) leave switched off - objective <= 0
    and no gradient reaching the image - so their maximised image is only the start noise."""
    norm = _normalization(model, normalize, preprocess)
    v = model_variables(variables)

    def total(x):
        xin = x if norm is None else (x - jnp.asarray(norm[0])) / jnp.asarray(norm[1])
        _, acts = apply_with_taps(model, v, xin)
        values = objective(acts, x)
        return jnp.sum(values), values

    g, values = jax.grad(total, has_aux=True)(jnp.asarray(images, jnp.float32))
    flat = np.abs(np.asarray(g)).reshape(len(images), -1).max(axis=1)
    return (np.asarray(values) <= 0) & (flat == 0)
