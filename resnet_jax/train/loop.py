"""The training loop: data, model, optimizer, steps, evaluation, checkpoints and logs.

``train(TrainConfig(...))`` runs a whole training and returns a summary; the
``resnet-jax train`` command (and ``python train.py``) is a thin layer over it. A run is
set up (settings, data, run directory, lock, state), fitted (the steps, with validation
and saves) and finally evaluated on the test split.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import math
import threading
import time
from pathlib import Path

import jax

from ..data import Loader, Preprocess, load_splits
from ..errors import ResNetJaxError
from ..xla_cpu import inference_jit
from . import sharding as shd
from .checkpoints import RunCheckpoints
from .config import DATASET_DEFAULTS, GENERIC_DEFAULTS, TrainConfig  # noqa: F401 (re-exported)
from .evaluation import EvalResult, evaluate
from .lock import RunLock
from .logs import METRICS_FILE, MetricLog, trim_metrics
from .start import Start, abstract_state, build_model, fresh_start, initial_state, optimizer_config  # noqa: F401
from .state import make_optimizer, schedule
from .step import make_eval_step, make_train_step


class TrainingDiverged(ResNetJaxError):
    """The loss or the parameters stopped being finite."""


def _run_dir(cfg: TrainConfig) -> Path:
    if cfg.output:
        return Path(cfg.output)
    name = Path(cfg.dataset.split(":")[-1]).name or "data"
    prefix = f"{name}-{cfg.arch}"
    if cfg.resume:
        runs = sorted(Path("runs").glob(f"{prefix}-*")) if Path("runs").is_dir() else []
        if not runs:
            raise ResNetJaxError(
                f"--resume found no run under runs/{prefix}-*; pass --output DIR of the run to resume"
            )
        return runs[-1]
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{prefix}-{stamp}"


@dataclasses.dataclass
class _Data:
    """The data side of a run: splits, preprocessing, loaders and the step count."""

    train_set: object
    pre: Preprocess
    train_loader: Loader
    eval_loaders: dict
    steps_per_epoch: int
    total_steps: int

    @property
    def num_classes(self) -> int:
        return self.train_set.num_classes

    @property
    def channels(self) -> int:
        return self.train_set.channels

    def unreadable(self) -> dict[str, str]:
        """Unreadable images this process's loaders have met so far: path -> reason."""
        out = dict(self.train_loader.unreadable)
        for loader in self.eval_loaders.values():
            out.update(loader.unreadable)
        return out


class _Steps:
    """The run's optimizer and jitted steps, its train step compiled ahead in a thread.

    ``compile_ahead`` traces the train step for the shapes of the state and of a batch as
    soon as the model is known, then compiles it in a thread while this one draws the
    variables, builds the optimizer state and starts the loader; ``wait`` joins the thread
    before the first step, which then finds the executable in jit's cache. XLA compiles
    without Python's lock, so the two overlap on two cores or more."""

    def __init__(self, cfg: TrainConfig, data: _Data, mesh):
        self.opt_cfg = optimizer_config(cfg, data.steps_per_epoch)
        self.tx = make_optimizer(self.opt_cfg)  # one object: the state's static part, in jit's key
        step = make_train_step(data.pre.mean, data.pre.std, data.num_classes, cfg.label_smoothing,
                               schedule(self.opt_cfg))
        rep = shd.replicated(mesh)
        self.train = jax.jit(step, donate_argnums=0, out_shardings=(rep, rep))
        self.eval = inference_jit(make_eval_step(data.pre.mean, data.pre.std, data.num_classes))
        self.mesh, self.batch_spec = mesh, data.train_loader.batch_spec()
        self.started = False
        self._thread: threading.Thread | None = None

    def compile_ahead(self, state) -> None:
        """Trace the train step for ``state`` (the state's arrays, or a function returning
        their shapes, as ``abstract_state`` does) placed as the loop places it, replicated,
        and a batch split over the mesh; then start compiling it. A failure is left for the
        training thread to meet where it always did: drawing the variables, or the first step."""
        self.started = True
        rep, split = shd.replicated(self.mesh), shd.batch_sharding(self.mesh)
        try:
            state = jax.tree_util.tree_map(
                lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep, weak_type=a.weak_type),
                state() if callable(state) else state)
            batch = {k: jax.ShapeDtypeStruct(shape, dtype, sharding=split)
                     for k, (shape, dtype) in self.batch_spec.items()}
            lowered = self.train.lower(state, batch)
        except Exception:  # noqa: BLE001 - raised again, where it belongs, by the training thread
            return
        self._thread = threading.Thread(target=_compile_quietly, args=(lowered,),
                                        name="resnet-jax-compile")
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None


def _compile_quietly(lowered) -> None:
    try:
        lowered.compile()
    except Exception:  # noqa: BLE001 - the first step compiles again, and raises, in the loop's thread
        pass


class _Skips:
    """Reports unreadable images once each: one log line whenever new ones were met."""

    def __init__(self, data: _Data, log):
        self.data, self.log, self.seen = data, log, set()

    def count(self) -> int:
        return len(self.data.unreadable())

    def report(self) -> None:
        bad = self.data.unreadable()
        new = [reason for path, reason in bad.items() if path not in self.seen]
        if new:
            self.seen.update(bad)
            self.log(f"warning: skipped {len(bad)} unreadable image(s) so far: " + "; ".join(new[:3])
                     + (f" (and {len(new) - 3} more)" if len(new) > 3 else "")
                     + "; --strict stops at the first, resnet-jax check-data lists them all")


def _load_data(cfg: TrainConfig) -> _Data:
    sets = load_splits(cfg.dataset, test_fraction=cfg.test_fraction, val_fraction=cfg.val_fraction,
                       channels=cfg.channels, strict=cfg.strict,
                       unknown_classes="skip" if cfg.skip_unknown_classes else "error")
    train_set = sets["train"]
    if train_set.num_classes < 2:
        raise ResNetJaxError(
            f"data set {cfg.dataset!r} has {train_set.num_classes} class "
            f"({', '.join(map(str, train_set.class_names))}); a classifier needs at least 2")
    pre = train_set.preprocess
    if cfg.image_size:
        pre = dataclasses.replace(pre, image_size=int(cfg.image_size))
    host = dict(shard_index=jax.process_index(), shard_count=jax.process_count(),
                threads=cfg.threads, workers=cfg.workers, strict=cfg.strict)
    train_loader = Loader(train_set, cfg.batch_size, train=True, seed=cfg.seed, preprocess=pre, **host)
    eval_loaders = {k: Loader(v, cfg.batch_size, train=False, preprocess=pre, **host)
                    for k, v in sets.items() if k in ("val", "test")}
    spe = len(train_loader)
    total_steps = cfg.epochs * spe
    if cfg.max_steps:
        total_steps = min(total_steps, int(cfg.max_steps))
    return _Data(train_set, pre, train_loader, eval_loaders, spe, total_steps)


def _check_run_dir(cfg: TrainConfig, run_dir: Path) -> None:
    if cfg.resume:
        if not run_dir.is_dir():
            raise ResNetJaxError(f"--resume: {run_dir} does not exist; nothing to resume")
    elif run_dir.is_dir() and any(p.name.isdigit() for p in run_dir.iterdir()):
        raise ResNetJaxError(
            f"{run_dir} already holds a run's checkpoints; pass --resume to continue it "
            "or choose another --output"
        )


def _mesh(cfg: TrainConfig):
    devices = jax.devices()
    if cfg.devices:
        if cfg.devices > len(devices):
            raise ResNetJaxError(f"--devices {cfg.devices} asked for, only {len(devices)} present")
        devices = devices[: cfg.devices]
    mesh = shd.make_mesh(devices)
    shd.check_batch_size(cfg.batch_size, mesh)
    return mesh


@dataclasses.dataclass
class _Run:
    """A run set up: its settings, data, devices, directory, checkpoints and start."""

    cfg: TrainConfig
    given: TrainConfig  # as asked, before the data set's defaults filled it in
    data: _Data
    mesh: object
    run_dir: Path
    ckpts: RunCheckpoints
    start: Start | None  # None when resuming: read once the run directory is locked

    @property
    def main_process(self) -> bool:
        return jax.process_index() == 0


def train(cfg: TrainConfig, *, log=print) -> dict:
    """Run a training; returns a summary (accuracies, run directory, last checkpoint).

    Every setting is checked first, then the data; nothing is written before both pass.
    The run directory is locked for the run's life (``resnet_jax.train.lock``)."""
    t_start = time.time()
    given, cfg = cfg, cfg.resolved().validate()
    mesh = _mesh(cfg)
    data = _load_data(cfg)
    run_dir = _run_dir(cfg)
    _check_run_dir(cfg, run_dir)
    steps = _Steps(cfg, data, mesh)
    try:
        # A bad model option raises here: nothing written. The step compiles meanwhile.
        start = None if cfg.resume else fresh_start(
            cfg, data, lambda model: steps.compile_ahead(
                lambda: abstract_state(model, data.pre.image_size, steps.tx)))
        lock = RunLock(run_dir).acquire() if jax.process_index() == 0 else None
        run = _Run(cfg, given, data, mesh, run_dir, RunCheckpoints(run_dir, cfg.keep), start)
        try:
            summary = _train_locked(run, steps, log)
        finally:
            run.ckpts.close()  # before the interpreter exits, whatever stopped the run
            if lock is not None:
                lock.release()
    finally:
        steps.wait()  # no compiling thread outlives the run
    summary["seconds"] = time.time() - t_start
    return summary


def _train_locked(run: _Run, steps: _Steps, log) -> dict:
    cfg, data = run.cfg, run.data
    state, run.start = initial_state(cfg, run.given, run.run_dir, run.ckpts, data, steps.tx, log,
                                     run.start)
    state = shd.replicate(state, run.mesh)
    if not steps.started:  # resuming: the model is known from here
        steps.compile_ahead(state)
    if run.main_process:  # records past the start step: from a crashed attempt, logged again
        trim_metrics(run.run_dir / METRICS_FILE, run.start.step or 0)
    logs = MetricLog(run.run_dir, enabled=run.main_process, tensorboard=cfg.tensorboard,
                     start_step=run.start.step)
    if run.main_process:
        _log_start(run, log)
    saver, skips = _Saver(run), _Skips(data, log if run.main_process else (lambda _: None))
    try:
        steps.wait()
        state, val = _fit(run, state, saver, logs, skips, steps.train, steps.eval)
        saver.close()  # the training batches' threads or worker processes stop before the test pass
        test = _final_evaluation(run, state, logs, steps.eval, skips)
        latest_step, best = run.ckpts.latest_step(), run.ckpts.best_step()
    finally:
        saver.close()
        logs.close()
    return _summary(run, test, val, latest_step, best, logs)


def _log_start(run: _Run, log) -> None:
    cfg, data, start = run.cfg, run.data, run.start
    what = (f"resumed at step {start.step}" if start.step is not None else
            f"fine-tuning {cfg.init_from}" if cfg.init_from else "from scratch")
    log(f"training {start.arch} on {cfg.dataset} ({len(data.train_set)} train images, "
        f"{data.num_classes} classes, {data.pre.image_size}px) for {data.total_steps} steps on "
        f"{run.mesh.devices.size} device(s), {what}; run directory {run.run_dir}")


class _Saver:
    """Saves steps of the run and remembers the newest intact one."""

    def __init__(self, run: _Run):
        cfg, data = run.cfg, run.data
        self.ckpts, self.start, self.last_good = run.ckpts, run.start, run.start.step
        self.it = data.train_loader.iterator(run.start.data_state)
        self.model_extra = {"class_names": list(data.train_set.class_names),
                            "preprocess": data.pre.to_json(), "dataset": cfg.dataset}
        self.run_settings = {k: v for k, v in dataclasses.asdict(cfg).items()
                             if k not in ("progress", "resume", "output")}
        self.num_classes = data.num_classes

    def save(self, step: int, state, metrics=None) -> Path:
        info = {"step": step, "data": self.it.state(), "settings": self.run_settings,
                "num_classes": self.num_classes}
        path = self.ckpts.save(step, self.start.model, state, arch=self.start.arch,
                               model_extra=self.model_extra, train_info=info, metrics=metrics)
        self.last_good = step
        return path

    def close(self):
        self.it.close()


class _Metrics:
    """The training steps' metrics, kept on the device and fetched in one transfer by
    ``fetch``: then each step's are checked finite, in order, and logged.

    Waiting for the device at every step would stall a GPU's queue; a save or the end of
    an epoch fetches first, so no state is saved whose steps were not checked."""

    def __init__(self, run: _Run, logs: MetricLog, bar, saver: _Saver, skips: _Skips):
        self.run, self.logs, self.bar, self.saver, self.skips = run, logs, bar, saver, skips
        self.pending: list[tuple[int, dict]] = []  # (step, metrics on the device)
        self.windows = collections.deque()  # (steps, seconds) of recent fetches
        self.clock: float | None = None  # None: the next fetch holds the compiling step

    def add(self, step: int, metrics: dict) -> None:
        self.pending.append((step, metrics))

    def fetch(self) -> None:
        """Check and log every pending step; ``TrainingDiverged`` at the first non-finite one."""
        if not self.pending:
            return
        fetched = jax.device_get([m for _, m in self.pending])
        ips = self._throughput(len(self.pending))
        spe, skipped = self.run.data.steps_per_epoch, self.skips.count()
        for (step, _), values in zip(self.pending, fetched, strict=True):
            metrics = {k: float(v) for k, v in values.items()}
            _finite_check(metrics, step, (step - 1) // spe, self.run.run_dir, self.saver.last_good)
            self.logs.write({"kind": "train", "step": step, "epoch": (step - 1) // spe + 1,
                             "images_per_s": ips, "skipped_images": skipped, **metrics})
        self.bar.update(len(self.pending))
        self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", img_s=f"{ips or 0:.0f}", refresh=False)
        self.pending = []
        self.skips.report()

    def _throughput(self, steps: int) -> float | None:
        """Images per second over the last 20 or more steps, leaving out the first step
        (it compiles) and the time of evaluations and saves (``restart_clock``)."""
        now, clock, self.clock = time.time(), self.clock, time.time()
        if clock is not None:
            self.windows.append((steps, max(now - clock, 1e-9)))
        while len(self.windows) > 1 and sum(n for n, _ in list(self.windows)[1:]) >= 20:
            self.windows.popleft()
        if not self.windows:
            return None
        n, seconds = map(sum, zip(*self.windows, strict=True))
        return self.run.cfg.batch_size * n / seconds

    def restart_clock(self) -> None:
        if self.clock is not None:
            self.clock = time.time()


def _finite_check(metrics: dict, step: int, epoch: int, run_dir: Path, last_good: int | None):
    bad = [k for k in ("loss", "param_norm", "grad_norm") if k in metrics and not math.isfinite(metrics[k])]
    if not bad:
        return
    where = (f"the last good checkpoint, step {last_good}, is kept in {run_dir.absolute()}"
             if last_good is not None else "no checkpoint had been written yet")
    raise TrainingDiverged(
        f"{' and '.join(bad)} became {metrics[bad[0]]} at step {step} (epoch {epoch + 1}); "
        f"training stopped and this state was not saved; {where}. "
        "Lower --lr, add --clip-norm, or use --warmup-epochs, then --resume or start again"
    )


def _fit(run: _Run, state, saver: _Saver, logs: MetricLog, skips: _Skips, train_step, eval_step):
    """The training steps from the start step to the end, with evaluations and saves."""
    from tqdm import tqdm

    cfg, data, mesh = run.cfg, run.data, run.mesh
    spe, total_steps = data.steps_per_epoch, data.total_steps
    start_step = int(saver.start.step or 0)
    bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
               disable=not (cfg.progress and run.main_process), leave=False)
    metrics, val = _Metrics(run, logs, bar, saver, skips), None
    try:
        for done in range(start_step + 1, total_steps + 1):
            state, step_metrics = train_step(state, shd.shard_batch(next(saver.it), mesh))
            metrics.add(done, step_metrics)
            epoch_end = done % spe == 0
            validate = epoch_end and "val" in data.eval_loaders and (
                (done // spe) % cfg.eval_every == 0 or done == total_steps)
            save = epoch_end or done == total_steps or (
                cfg.checkpoint_every and done % cfg.checkpoint_every == 0)
            if save or done == start_step + 1 or done % cfg.log_every == 0:
                metrics.fetch()  # before any save: a state is saved only once checked finite
            if validate:
                val = evaluate(state, data.eval_loaders["val"], eval_step, mesh)
                logs.write({"kind": "val", "step": done, "epoch": done // spe, "loss": val.loss,
                            "accuracy": val.accuracy, "top5": val.top5, "skipped_images": skips.count()})
                skips.report()
                saver.save(done, state, {"val_accuracy": val.accuracy, "val_loss": val.loss})
            elif save:
                saver.save(done, state)
            if save:
                metrics.restart_clock()
    finally:
        bar.close()
    return state, val


def _final_evaluation(run: _Run, state, logs: MetricLog, eval_step, skips: _Skips) -> EvalResult:
    """The trained state on the test split (the validation split when there is none)."""
    loader = run.data.eval_loaders.get("test") or run.data.eval_loaders.get("val")
    test = evaluate(state, loader, eval_step, run.mesh)
    logs.write({"kind": "test", "step": run.data.total_steps, "loss": test.loss,
                "accuracy": test.accuracy, "top5": test.top5, "skipped_images": skips.count()})
    skips.report()
    return test


def _summary(run: _Run, test: EvalResult, val, latest_step, best, logs) -> dict:
    run_dir = run.run_dir
    latest = run_dir / str(latest_step) if latest_step is not None else None
    summary = {
        "test_accuracy": test.accuracy, "test_correct": int(round(test.accuracy * test.count)),
        "test_count": test.count, "test_loss": test.loss, "test_top5": test.top5,
        "val_accuracy": None if val is None else val.accuracy,
        "run_dir": str(run_dir), "checkpoint": str(latest) if latest else None,
        "best_checkpoint": str(run_dir / str(best)) if best is not None else None,
        "steps": run.data.total_steps, "skipped_images": len(run.data.unreadable()),
    }
    if run.main_process and run.cfg.plots:
        from ..viz.curves import plot_curves
        from .logs import read_metrics

        summary["curves"] = str(plot_curves(read_metrics(logs.path), run_dir / "curves.png"))
    return summary
