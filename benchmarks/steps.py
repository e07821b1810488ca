"""The steps the benchmarks time: this project's and torchvision's, built the same way.

JAX: the project's own ``make_train_step`` (forward in train mode, cross-entropy,
gradients, SGD with momentum 0.9, BatchNorm running statistics) jitted with the state
donated, exactly as ``resnet_jax.train.loop`` jits it; inference is ``model.apply`` in eval
mode, ``ops.cpu_fast(model)`` under ``xla_cpu.inference_jit``, as ``predict`` runs it. Torch: ``model.train()``, the same loss, ``loss.backward()``,
``torch.optim.SGD(momentum=0.9)``; inference under ``torch.inference_mode()`` in eval mode.
Both get the same batch size, image size and float32 parameters.
"""

from __future__ import annotations

import numpy as np

from resnet_jax.imagenet import MEAN as IMAGENET_MEAN
from resnet_jax.imagenet import STD as IMAGENET_STD


def batch_arrays(batch: int, size: int, num_classes: int = 1000, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, num_classes, (batch,), dtype=np.int32)
    return images, labels


# ----------------------------------------------------------------------------- JAX

def jax_train_step(arch: str, batch: int, size: int, dtype=None, block: bool = True):
    """Returns ``(run, compile_seconds, flops)``; ``run()`` does one step and blocks on it.

    With ``block=False`` ``run()`` only dispatches the step and ``run.sync()`` waits for
    the last one: a block of steps then runs back to back on an accelerator.
    """
    import time

    import jax
    import jax.numpy as jnp

    from resnet_jax import create_model, init_variables
    from resnet_jax.train.state import OptimizerConfig, TrainState, make_optimizer
    from resnet_jax.train.step import make_train_step

    kw = {} if dtype is None else {"dtype": jnp.dtype(dtype)}
    model = create_model(arch, **kw)
    variables = init_variables(model, 0)
    tx = make_optimizer(OptimizerConfig(optimizer="sgd", lr=0.01, momentum=0.9, nesterov=False,
                                        weight_decay=0.0, total_steps=10**6))
    state = TrainState.create(model.apply, variables, tx)
    step = jax.jit(make_train_step(IMAGENET_MEAN, IMAGENET_STD, model.num_classes),
                   donate_argnums=0)
    images, labels = batch_arrays(batch, size, model.num_classes)
    data = {"image": jnp.asarray(images), "label": jnp.asarray(labels)}
    t0 = time.perf_counter()
    compiled = step.lower(state, data).compile()
    compile_s = time.perf_counter() - t0
    flops = _flops(compiled)
    holder = [state]

    def run():
        new_state, metrics = compiled(holder[0], data)
        holder[0], holder[1:] = new_state, [metrics["loss"]]
        if block:
            jax.block_until_ready(metrics["loss"])

    run.sync = lambda: jax.block_until_ready(holder[1:])
    run.compiled = compiled
    return run, compile_s, flops


def _flops(compiled) -> float:
    """XLA's own count of the floating-point operations of a compiled program (0 if unknown)."""
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return float(cost.get("flops", 0.0))
    except Exception:
        return 0.0


def jax_infer(arch: str, batch: int, size: int, dtype=None, block: bool = True):
    import time

    import jax
    import jax.numpy as jnp

    from resnet_jax import create_model, init_variables, ops
    from resnet_jax.train.step import normalize
    from resnet_jax.xla_cpu import inference_jit

    kw = {} if dtype is None else {"dtype": jnp.dtype(dtype)}
    model = create_model(arch, **kw)
    variables = init_variables(model, 0)
    model = ops.cpu_fast(model)  # as the project's inference paths run it

    def infer(variables, images):
        return model.apply(variables, normalize(images, IMAGENET_MEAN, IMAGENET_STD), train=False)

    images, _ = batch_arrays(batch, size, model.num_classes)
    images = jnp.asarray(images)
    t0 = time.perf_counter()
    compiled = inference_jit(infer).lower(variables, images).compile()
    compile_s = time.perf_counter() - t0

    last = []

    def run():
        last[:] = [compiled(variables, images)]
        if block:
            jax.block_until_ready(last)

    run.sync = lambda: jax.block_until_ready(last)
    return run, compile_s, _flops(compiled)


# --------------------------------------------------------------------------- torch

def _torch_batch(batch, size, num_classes, channels_last=False, device="cpu", dtype=None):
    import torch

    images, labels = batch_arrays(batch, size, num_classes)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = ((x - mean) / std).contiguous().to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(labels.astype(np.int64)).to(device)
    return x, y


def torch_train_step(arch: str, batch: int, size: int, compile: bool = False,
                     channels_last: bool = False, device: str = "cpu", amp: bool = False,
                     block: bool = True):
    import time

    import torch
    import torchvision

    model = getattr(torchvision.models, arch)().to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    x, y = _torch_batch(batch, size, 1000, channels_last, device)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=amp):
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    fn = torch.compile(step) if compile else step
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    t0 = time.perf_counter()
    fn().item()  # the first call compiles (torch.compile) or warms up
    sync()
    compile_s = time.perf_counter() - t0

    def run():
        loss = fn()
        if block:
            loss.item()
            sync()

    run.sync = sync
    return run, compile_s


def torch_infer(arch: str, batch: int, size: int, compile: bool = False,
                channels_last: bool = False, device: str = "cpu", amp: bool = False,
                block: bool = True):
    import time

    import torch
    import torchvision

    model = getattr(torchvision.models, arch)().to(device).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    x, _ = _torch_batch(batch, size, 1000, channels_last, device)

    def fwd():
        with torch.inference_mode(), torch.autocast(device_type=device.split(":")[0],
                                                    dtype=torch.bfloat16, enabled=amp):
            return model(x)

    fn = torch.compile(fwd) if compile else fwd
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    t0 = time.perf_counter()
    fn()
    sync()
    compile_s = time.perf_counter() - t0

    def run():
        out = fn()
        if block:
            out.float().sum().item()
            sync()

    run.sync = sync
    return run, compile_s
