"""The XLA:CPU tuning: one process-wide flag, set by one explicit call, and per-program
compiler options for inference and for programs that run once.

Importing this module changes nothing. ``configure()`` adds the flag to ``XLA_FLAGS``;
the ``resnet-jax`` command, ``train.py``, ``convert_weights.py`` and the benchmarks call
it before JAX starts, and a library user who wants the same CPU speed calls it first:

    >>> import resnet_jax.xla_cpu
    >>> resnet_jax.xla_cpu.configure()  # before JAX's first computation
    >>> import jax  # ... as usual

``RESNET_JAX_XLA_FLAGS=0`` turns the flag and the per-program options off.
The figures behind each choice are in docs/performance.md.
"""

from __future__ import annotations

import functools
import os

# XLA:CPU hands convolutions to YNNPACK by default in recent jaxlibs; on x86 its
# convolutions, the weight gradients most of all, are slower than XLA's own (Eigen) ones.
# The flag takes the convolutions away from YNNPACK and leaves it everything else.
CPU_XLA_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",)

# Inference-type programs (a forward pass, or one with input gradients) compile without
# YNNPACK fusions: its reduction fusion grows from the global average pool back over whole
# stages into one subgraph slower than XLA's own kernels. Training steps keep YNNPACK, which
# runs their BatchNorm statistics and bias gradients well.
_INFERENCE_OPTION = ("xla_cpu_experimental_ynn_fusion_type", "")

# Programs that run once per run and compute integers and constants only (the models'
# initialiser: each parameter's key and zeros; the optimizer's initial state: zeros and
# counters) compile without LLVM's optimisations and with XLA's older loop emitters: the
# compile is several times quicker (docs/performance.md) and the results are the same bits
# (integer arithmetic is exact at any optimisation level). They run once, so their own
# speed does not matter.
_ONE_SHOT_OPTIONS = (("xla_backend_optimization_level", 0), ("xla_cpu_use_fusion_emitters", False))

_added: list[str] = []  # the flags configure() put into XLA_FLAGS


def _opted_out() -> bool:
    return os.environ.get("RESNET_JAX_XLA_FLAGS", "1").lower() in ("0", "off", "false", "no")


def configure(flags=CPU_XLA_FLAGS) -> bool:
    """Add ``flags`` (the CPU tuning) to the ``XLA_FLAGS`` environment variable.

    Call it before JAX's first computation: XLA reads the variable once, when its first
    backend starts, so a later call changes nothing in this process (it still reaches
    child processes that inherit the environment). A flag is added only when this jaxlib
    knows it (XLA aborts on an unknown flag) and the user did not set it already;
    ``RESNET_JAX_XLA_FLAGS=0`` opts out. Returns whether the environment was changed.
    """
    current = os.environ.get("XLA_FLAGS", "")
    new = with_cpu_flags(current, flags)
    if new == current:
        return False
    os.environ["XLA_FLAGS"] = new
    _added.extend(f for f in flags if f not in current and f in new)
    return True


def with_cpu_flags(xla_flags: str, flags=CPU_XLA_FLAGS) -> str:
    """``xla_flags`` (an ``XLA_FLAGS`` value) with those of ``flags`` added that this
    jaxlib knows and it does not set already; unchanged under ``RESNET_JAX_XLA_FLAGS=0``.
    For the environment of a child process; ``configure()`` applies it to this one."""
    if _opted_out():
        return xla_flags
    missing = [f for f in flags if f.split("=")[0] not in xla_flags and _jaxlib_knows(f)]
    return " ".join([xla_flags, *missing]).strip() if missing else xla_flags


def _user_flags() -> str:
    """``XLA_FLAGS`` without the flags ``configure()`` added."""
    flags = os.environ.get("XLA_FLAGS", "")
    for flag in _added:
        flags = flags.replace(flag, "")
    return flags


def _cpu_options(pairs) -> dict:
    """Those of ``pairs`` (name, value) this jaxlib knows and the user did not set in
    ``XLA_FLAGS``; empty unless the default backend is the CPU and ``RESNET_JAX_XLA_FLAGS=0``
    is not set."""
    import jax

    if _opted_out() or jax.default_backend() != "cpu":
        return {}
    user = _user_flags()
    return {name: value for name, value in pairs if name not in user and _jaxlib_knows(name)}


def inference_compiler_options() -> dict[str, str]:
    """XLA options for ``jax.jit(program, compiler_options=...)`` of inference-type
    programs (evaluation, prediction, Grad-CAM, activation maximisation)."""
    return _cpu_options([_INFERENCE_OPTION])


def one_shot_compiler_options() -> dict:
    """XLA options for programs that run once and compute only integers and constants
    (``_ONE_SHOT_OPTIONS``): the models' initialiser and the optimizer's initial state."""
    return _cpu_options(_ONE_SHOT_OPTIONS)


def inference_jit(fn, **jit_kwargs):
    """``jax.jit(fn)`` compiled with ``inference_compiler_options()`` when called on arrays.

    JAX takes compiler options only on a top-level jit, so called inside another trace
    (``jax.jit``, ``jax.make_jaxpr``, ``jax.vmap`` of the caller's) it is a plain
    ``jax.jit``.
    """
    return _jit_with_options(fn, inference_compiler_options(), jit_kwargs)


def one_shot_jit(fn, **jit_kwargs):
    """``jax.jit(fn)`` compiled with ``one_shot_compiler_options()`` when called on arrays
    (a plain ``jax.jit`` inside another trace), for a program that runs once and whose
    results are integers or constants, the same bits however it is optimised."""
    return _jit_with_options(fn, one_shot_compiler_options(), jit_kwargs)


def _jit_with_options(fn, options: dict, jit_kwargs: dict):
    import jax

    plain = jax.jit(fn, **jit_kwargs)
    if not options:
        return plain
    top = jax.jit(fn, compiler_options=options, **jit_kwargs)

    @functools.wraps(fn)
    def call(*args, **kwargs):
        traced = any(isinstance(leaf, jax.core.Tracer)
                     for leaf in jax.tree_util.tree_leaves((args, kwargs)))
        return (plain if traced else top)(*args, **kwargs)

    call.lower = top.lower
    call.compiler_options = options  # what its top-level compiles get
    return call


@functools.cache
def _jaxlib_knows(flag: str) -> bool:
    """Whether this jaxlib's XLA defines ``flag``: its name is in the shared library
    (asking XLA itself would start it, and it aborts on unknown flags)."""
    import glob
    import mmap

    import jaxlib

    name = flag.lstrip("-").split("=")[0].encode()
    for path in glob.glob(os.path.join(os.path.dirname(jaxlib.__file__), "*jax_common*.so")):
        try:
            with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                if m.find(name) >= 0:
                    return True
        except (OSError, ValueError):
            continue
    return False
