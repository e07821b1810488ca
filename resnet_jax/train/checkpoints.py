"""A training run's checkpoints: orbax ``CheckpointManager`` over numbered step folders.

Each step folder holds the model items of ``resnet_jax.checkpoint.save_args``
(``variables``, ``config``), so ``resnet_jax.load(run_dir)`` reads the latest one, plus
``opt_state`` (the optax state) and ``train`` (JSON: the step, the data-iterator state,
the run's settings). orbax writes each step into a temporary folder and renames it when
complete, so a crash mid-save leaves the earlier steps intact. Kept: the last ``keep``
steps and the one with the best validation accuracy.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import jax
import numpy as np

from ..checkpoint import save_args
from ..errors import ResNetJaxError

BEST_METRIC = "val_accuracy"


class _QuietUntrackedSaves(logging.Filter):
    """orbax warns on every save without metrics once a best metric is tracked; mid-epoch
    saves have none by design."""

    def filter(self, record):
        return "tracked_metric" not in record.getMessage()


logging.getLogger("absl").addFilter(_QuietUntrackedSaves())


class RunCheckpoints:
    """A run's checkpoints (orbax ``CheckpointManager``, built on first use: importing and
    opening it takes ~0.3 s that the first training step need not wait for)."""

    def __init__(self, directory, keep: int = 3, create: bool = True):
        self.directory = Path(directory).absolute()
        self._keep, self._create = keep, create

    @functools.cached_property
    def manager(self):
        import orbax.checkpoint as ocp
        from orbax.checkpoint import checkpoint_managers as cm

        policy = cm.AnyPreservationPolicy([
            cm.LatestN(n=max(1, int(self._keep))),
            cm.BestN(get_metric_fn=lambda m: m[BEST_METRIC], reverse=False, n=1,
                     keep_checkpoints_without_metrics=False),
        ])
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy,
            best_fn=lambda m: m[BEST_METRIC],  # makes orbax store the metrics with each step
            best_mode="max",
            enable_async_checkpointing=False,  # buffers are donated to the next step
            create=self._create,
            cleanup_tmp_directories=True,
        )
        return ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def best_step(self) -> int | None:
        best = None
        for step in self.all_steps():
            m = self.manager.metrics(step)
            if m and BEST_METRIC in m and (best is None or m[BEST_METRIC] > best[1]):
                best = (step, m[BEST_METRIC])
        return None if best is None else best[0]

    def save(self, step: int, model, state, *, arch: str | None, model_extra: dict,
             train_info: dict, metrics: dict | None = None) -> Path:
        import orbax.checkpoint as ocp

        if step in self.all_steps():
            return self.directory / str(step)
        # Host copies: a checkpoint written from 4 devices then loads on 1 (or on a GPU).
        variables, opt_state = to_host(state.variables), to_host(state.opt_state)
        args = ocp.args.Composite(
            **save_args(model, variables, arch=arch, **model_extra),
            opt_state=ocp.args.StandardSave(opt_state),
            train=ocp.args.JsonSave(train_info),
        )
        self.manager.save(step, args=args, metrics=metrics, force=True)
        self.manager.wait_until_finished()
        return self.directory / str(step)

    def restore_info(self, step: int) -> tuple[dict, dict]:
        """``(train_info, model config)`` of ``step``."""
        import orbax.checkpoint as ocp

        out = self.manager.restore(step, args=ocp.args.Composite(
            train=ocp.args.JsonRestore(), config=ocp.args.JsonRestore()))
        return dict(out["train"]), dict(out["config"])

    def restore_state(self, step: int, abstract_variables, abstract_opt_state):
        import orbax.checkpoint as ocp

        try:
            out = self.manager.restore(step, args=ocp.args.Composite(
                variables=ocp.args.StandardRestore(abstract_variables),
                opt_state=ocp.args.StandardRestore(abstract_opt_state),
            ))
        except Exception as e:
            raise ResNetJaxError(
                f"cannot restore step {step} of {self.directory}: {e}; "
                "resume with the optimizer settings (--optimizer, --freeze-backbone, --clip-norm) of the saved run"
            ) from e
        return dict(out["variables"]), out["opt_state"]

    def close(self):
        if "manager" in self.__dict__:  # never opened: nothing to close
            self.manager.wait_until_finished()
            self.manager.close()


def to_host(tree):
    """numpy copies of replicated arrays (each process holds the whole value)."""
    def one(x):
        if isinstance(x, jax.Array):
            return np.asarray(x.addressable_data(0)) if not x.is_fully_addressable else np.asarray(x)
        return x

    return jax.tree_util.tree_map(one, tree)


def abstract(tree):
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
