"""A training run's checkpoints: orbax ``CheckpointManager`` over numbered step folders.

Each step folder holds the model items of ``resnet_jax.checkpoint.save_args``
(``variables``, ``config``), so ``resnet_jax.load(run_dir)`` reads the latest one, plus
``opt_state`` (the optax state) and ``train`` (JSON: the step, the data-iterator state,
the run's settings). orbax writes each step into a temporary folder and renames it when
complete, so a crash mid-save leaves the earlier steps intact. Kept: the last ``keep``
steps and the one with the best validation accuracy. The config holds the SHA-256 of the
variables and ``train`` that of the optimizer state; both are verified on resume.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import time
from pathlib import Path

import jax
import numpy as np

from ..checkpoint import (
    CheckpointError,
    as_os_error,
    interrupts_deferred,
    model_variables,
    quiet_failures,
    read_json,
    save_args,
    tree_checksum,
)

TRAIN_ITEM = "train"
OPT_CHECKSUM_KEY = "opt_state_sha256"

BEST_METRIC = "val_accuracy"


class _QuietUntrackedSaves(logging.Filter):
    """orbax warns on every save without metrics once a best metric is tracked; mid-epoch
    saves have none by design."""

    def filter(self, record):
        return "tracked_metric" not in record.getMessage()


_QUIET_UNTRACKED = _QuietUntrackedSaves()  # installed by the first manager, not at import


class RunCheckpoints:
    """A run's checkpoints (orbax ``CheckpointManager``, built on first use: importing orbax
    and opening the manager need not delay the first training step)."""

    def __init__(self, directory, keep: int = 3, create: bool = True):
        self.directory = Path(directory).absolute()
        self._keep, self._create = keep, create

    @functools.cached_property
    def manager(self):
        import orbax.checkpoint as ocp
        from orbax.checkpoint import checkpoint_managers as cm

        logging.getLogger("absl").addFilter(_QUIET_UNTRACKED)  # once: a logger's filters are a set
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
        """Write ``step`` whole or not at all; SIGINT waits for the end of the save, and a
        file-system failure is an ``OSError`` naming the step's folder."""
        import orbax.checkpoint as ocp

        if step in self.all_steps():
            return self.directory / str(step)
        # Host copies: a checkpoint written from 4 devices then loads on 1 (or on a GPU).
        variables = model_variables(to_host(state.variables))
        opt_state = to_host(state.opt_state)
        train_info = {**train_info, OPT_CHECKSUM_KEY: tree_checksum(opt_state)}
        args = ocp.args.Composite(
            **save_args(model, variables, arch=arch, **model_extra),
            opt_state=ocp.args.StandardSave(opt_state),
            train=ocp.args.JsonSave(train_info),
        )
        try:
            with interrupts_deferred(), quiet_failures():
                try:
                    self.manager.save(step, args=args, metrics=metrics, force=True)
                    self.manager.wait_until_finished()
                except Exception:
                    self._abandon_manager()  # let its writes end while stderr is held
                    raise
        except Exception as e:
            self._remove_partial(step)
            err = as_os_error(e, self.directory / str(step))
            if err is None or err is e:
                raise
            raise err from e
        return self.directory / str(step)

    def _abandon_manager(self) -> None:
        manager = self.__dict__.pop("manager", None)
        try:
            if manager is not None:
                manager.close()
        except Exception:
            pass

    def _remove_partial(self, step: int) -> None:
        """orbax's temporary folder of an unfinished ``step`` (only that one). A failed
        save's last writes can still land after a first removal, so it is removed until the
        folder has stayed gone for a moment (at most 5 s)."""
        deadline, gone = time.monotonic() + 5.0, 0
        while gone < 2 and time.monotonic() < deadline:
            left = list(self.directory.glob(f"{step}.orbax-checkpoint-tmp*"))
            for p in left:
                shutil.rmtree(p, ignore_errors=True)
            gone = 0 if left else gone + 1
            time.sleep(0.1)
        self.__dict__.pop("manager", None)  # reopened on next use, listing what is on disk

    def read_train_info(self, step: int) -> dict:
        """The ``train`` item of ``step`` (JSON), or a one-line error naming the file."""
        file = self.directory / str(step) / TRAIN_ITEM / "metadata"
        info = read_json(file, f"step {step} is incomplete", f"step {step} is damaged")
        if not isinstance(info, dict) or "data" not in info:
            raise CheckpointError(f"{file} does not hold a training state; step {step} is damaged")
        return info

    def restore_opt_state(self, step: int, abstract_opt_state, info: dict):
        """The optimizer state of ``step``, verified against the checksum in ``info``."""
        import orbax.checkpoint as ocp

        try:
            out = self.manager.restore(step, args=ocp.args.Composite(
                opt_state=ocp.args.StandardRestore(abstract_opt_state)))
        except Exception as e:
            first = (str(e).strip().splitlines() or [""])[0]
            raise CheckpointError(f"cannot read the optimizer state of step {step} in "
                                  f"{self.directory}: {type(e).__name__}: {first}") from None
        opt_state = out["opt_state"]
        saved = info.get(OPT_CHECKSUM_KEY)
        if saved is not None and tree_checksum(opt_state) != saved:
            raise CheckpointError(f"checksum mismatch in step {step} ({self.directory / str(step)}): "
                                  "its optimizer state differs from what was saved")
        return opt_state

    def set_aside(self, step: int) -> Path:
        """Rename a damaged ``step`` to ``<step>.damaged`` (kept for inspection, no longer a step)."""
        src = self.directory / str(step)
        dst = src.with_name(f"{step}.damaged")
        n = 1
        while dst.exists():
            n += 1
            dst = src.with_name(f"{step}.damaged{n}")
        os.replace(src, dst)
        self.__dict__.pop("manager", None)
        return dst

    def close(self):
        if "manager" in self.__dict__:  # never opened: nothing to close
            try:
                self.manager.wait_until_finished()
                self.manager.close()
            except Exception:  # a failed save has already raised its own error
                pass


def to_host(tree):
    """numpy copies of replicated arrays (each process holds the whole value)."""
    def one(x):
        if isinstance(x, jax.Array):
            return np.asarray(x.addressable_data(0)) if not x.is_fully_addressable else np.asarray(x)
        return x

    return jax.tree_util.tree_map(one, tree)


def abstract(tree):
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
