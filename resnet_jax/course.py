"""The course as notebooks: ``resnet-jax course`` runs them, and they share these helpers.

Each slide (or group of slides) of the course is one jupytext percent-format notebook in
``course/`` (a plain ``.py`` file: ``python course/06_filters.py`` runs it, Jupyter with
jupytext opens it). A notebook learns where to write and how long to spend from
``RESNET_JAX_COURSE_OUT`` and ``RESNET_JAX_COURSE_FAST`` (set by ``resnet-jax course``) or
from its own command line (``python course/06_filters.py [OUT] [--fast]``). It writes its
figures, its tables and ``results.json`` (the numbers the tests check) to ``OUT/<notebook>/``.

    resnet-jax course --fast                 # all nine, small settings (what the tests run)
    resnet-jax course --out outputs/course   # full settings
    resnet-jax course --only 6 8             # some of them
    resnet-jax course --gallery docs/course  # also copy each notebook's figures there
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .errors import ResNetJaxError

OUT_ENV, FAST_ENV = "RESNET_JAX_COURSE_OUT", "RESNET_JAX_COURSE_FAST"
DEFAULT_OUT = "outputs/course"
GALLERY_LIMIT = 300 * 1024  # bytes per gallery PNG


def course_dir() -> Path:
    """The ``course/`` folder of this checkout (beside the package)."""
    path = Path(__file__).resolve().parent.parent / "course"
    if not path.is_dir():
        raise ResNetJaxError(
            f"the course notebooks are not here ({path}); they come with a source checkout "
            "of resnet-jax (pip install -e .), not with an installed wheel")
    return path


def notebooks() -> list[Path]:
    """The notebooks in order: ``course/NN_name.py``."""
    return sorted(p for p in course_dir().glob("[0-9][0-9]_*.py"))


# --- what a notebook uses ------------------------------------------------------------


@dataclasses.dataclass
class Session:
    """One notebook's run: where it writes and whether it is the fast run."""

    name: str
    out: Path
    fast: bool
    results: dict = dataclasses.field(default_factory=dict)
    figures: list = dataclasses.field(default_factory=list)

    def path(self, filename: str) -> Path:
        return self.out / filename

    def pick(self, fast, full):
        """``fast`` in the fast run, ``full`` otherwise."""
        return fast if self.fast else full

    def save_figure(self, fig, filename: str, dpi: int = 100) -> Path:
        """Write a matplotlib figure as PNG, close it and list it in results.json."""
        import matplotlib.pyplot as plt

        path = self.path(filename)
        fig.savefig(path, dpi=dpi)
        plt.close(fig)
        if path.stat().st_size > GALLERY_LIMIT:  # photographs: a 256-colour palette
            from PIL import Image

            with Image.open(path) as im:
                small = im.convert("RGB").quantize(256)
            small.save(path, optimize=True)
        if filename not in self.figures:
            self.figures.append(filename)
        self.record()  # results.json lists the figure
        print(f"wrote {path}")
        return path

    def save_text(self, filename: str, text: str) -> Path:
        path = self.path(filename)
        path.write_text(text if text.endswith("\n") else text + "\n")
        print(f"wrote {path}")
        return path

    def record(self, **values):
        """Add numbers to results.json (written at once, so a failed cell keeps the rest)."""
        self.results.update(values)
        doc = {"notebook": self.name, "fast": self.fast, "figures": self.figures,
               **_jsonable(self.results)}
        self.path("results.json").write_text(json.dumps(doc, indent=1) + "\n")


def _jsonable(value):
    import numpy as np

    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def session(notebook_file: str, argv: list[str] | None = None) -> Session:
    """The notebook's ``Session``: its output folder ``OUT/<notebook name>`` and the fast
    flag, from the environment (``resnet-jax course``) or the command line
    (``python course/06_filters.py [OUT] [--fast]``); also selects matplotlib's file
    backend. In Jupyter, ``__file__`` is unset: pass the notebook's name."""
    import matplotlib

    if "ipykernel" not in sys.modules:
        matplotlib.use("Agg")
    argv = sys.argv[1:] if argv is None else argv
    argv = [a for a in argv if not a.startswith("-f=") and not a.endswith(".json")]
    fast = os.environ.get(FAST_ENV, "").lower() in ("1", "true", "yes") or "--fast" in argv
    positional = [a for a in argv if not a.startswith("-")]
    root = Path(os.environ.get(OUT_ENV) or (positional[0] if positional else DEFAULT_OUT))
    from . import xla_cpu
    from .cli import enable_compilation_cache

    xla_cpu.configure()  # a notebook is an entry point: the CLI's CPU tuning, if still in time
    enable_compilation_cache()  # RESNET_JAX_CACHE, as the resnet-jax command
    name = Path(notebook_file).stem
    out = root / name
    out.mkdir(parents=True, exist_ok=True)
    print(f"{name}: writing to {out} ({'fast' if fast else 'full'} run)")
    s = Session(name, out, fast)
    s.record()
    return s


def upscale(image, size: int = 112):
    """A small image enlarged by an integer factor with nearest neighbours (no smoothing),
    so every pixel of a 12- or 28-pixel digit stays a sharp square."""
    import numpy as np

    a = np.asarray(image)
    k = max(1, size // max(a.shape[:2]))
    return a.repeat(k, axis=0).repeat(k, axis=1)


def show(ax, image, caption: str | None = None, **kw):
    """Draw an image on ``ax`` without smoothing, caption above it, no ticks."""
    import numpy as np

    a = np.asarray(image)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        kw.setdefault("cmap", "gray")
        kw.setdefault("vmin", 0.0)
        kw.setdefault("vmax", 1.0)
    im = ax.imshow(upscale(a) if a.shape[0] < 112 else a, interpolation="nearest", **kw)
    ax.set_xticks([])
    ax.set_yticks([])
    if caption:
        ax.set_title(caption, fontsize=8)
    return im


# --- digit data and the course's digit CNN, shared by slides 6 to 8 ------------------


def digit_data(size: int = 28):
    """scikit-learn's digits at ``size`` x ``size`` in [0, 1] (the project's test split):
    ``(x_train, y_train, x_test, y_test)``."""
    from .explain import testing

    return testing.digits(size=size, seed=0)


def trained_digit_cnn(s: Session):
    """The course's digit CNN trained on 28x28 digits: ``(model, variables, data, accuracy)``.

    Trained once per output folder and kept in ``OUT/_digit_cnn[_fast].msgpack``, so
    slides 6, 7 and 8 look at the same network (and each still runs on its own).
    """
    import flax.serialization
    import numpy as np

    import resnet_jax

    data = digit_data(28)
    x_tr, y_tr, x_te, y_te = data
    model = resnet_jax.create_model("digit_cnn")
    steps = s.pick(400, 1500)
    cache = s.out.parent / f"_digit_cnn_{steps}_steps.msgpack"
    if cache.is_file():
        template = resnet_jax.init_variables(model, 0)
        variables = flax.serialization.from_bytes(template, cache.read_bytes())
        print(f"digit_cnn read from {cache}")
    else:
        t0 = time.perf_counter()
        variables = train(model, x_tr, y_tr, steps=steps, batch=64, lr=2e-3, seed=0)
        print(f"trained digit_cnn for {steps} steps in {time.perf_counter() - t0:.1f} s")
        partial = cache.with_suffix(f".partial{os.getpid()}")
        partial.write_bytes(flax.serialization.to_bytes(variables))
        partial.replace(cache)
    acc = float(np.mean(np.argmax(predict(model, variables, x_te), -1) == y_te))
    print(f"digit_cnn test accuracy {acc:.2%} on {len(y_te)} held-out digits")
    return model, variables, data, acc


def train(model, x, y, steps: int, batch: int = 64, lr: float = 3e-3, seed: int = 0):
    """``resnet_jax.explain.testing.train_classifier`` (Adam, one compiled scan) of
    ``ops.cpu_fast(model)`` (XLA:CPU compiles JAX's own convolution gradients inside a
    scan as slow loops), waited for. Returns the variables."""
    import jax

    from . import ops
    from .explain import testing

    variables = testing.train_classifier(ops.cpu_fast(model), x, y, steps=steps, batch=batch,
                                         lr=lr, seed=seed)
    return jax.block_until_ready(variables)


def predict(model, variables, x, batch: int = 512):
    """Class probabilities for images already in the model's input form, batched."""
    import jax
    import numpy as np

    fn = jax.jit(lambda v, xb: jax.nn.softmax(model.apply(v, xb, train=False), -1))
    return np.concatenate([np.asarray(fn(variables, x[i:i + batch]))
                           for i in range(0, len(x), batch)])


def unit_activations(model, variables, x, layer: str, batch: int = 1024):
    """Each image's activation of every unit of ``layer`` from batched forward passes
    (``resnet_jax.features``): a dense layer's outputs, or a convolution's a^k = the sum
    of channel k over the positions. Returns (N, units)."""
    import numpy as np

    import resnet_jax

    parts = []
    for i in range(0, len(x), batch):
        a = np.asarray(resnet_jax.features(model, variables, x[i:i + batch], names=[layer])[layer])
        parts.append(a.reshape(a.shape[0], -1, a.shape[-1]).sum(1) if a.ndim == 4 else a)
    return np.concatenate(parts)


def strongest(activations, units, n: int = 3):
    """For each unit, the indices of the ``n`` images that activate it most, best first."""
    import numpy as np

    return {int(k): np.argsort(-activations[:, k], kind="stable")[:n] for k in units}


# --- resnet18, pretrained when torchvision's file is in its cache (slides 4 and 9) ----


def resnet18(s: Session):
    """``(model, variables, pretrained, note)``: torchvision's ImageNet resnet18 converted
    by ``convert_weights.py`` when ``IMAGENET1K_V1`` is in torch.hub's cache, random
    weights otherwise (``note`` says which, in one line, for every figure)."""
    import resnet_jax

    path = _cached_resnet18()
    if path is None:
        note = ("resnet18 RANDOM WEIGHTS (torchvision's IMAGENET1K_V1 file is not in "
                "torch.hub's cache): classes and maps are meaningless")
        print(note)
        model = resnet_jax.create_model("resnet18")
        return model, resnet_jax.init_variables(model, 0), False, note
    out = s.out.parent / "_resnet18"
    if not (out / "config.json").exists() and not out.exists():
        cmd = [sys.executable, str(course_dir().parent / "convert_weights.py"), "--arch",
               "resnet18", "--weights", "IMAGENET1K_V1", "--out", str(out), "--verify"]
        print("$", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True)
    model, variables = resnet_jax.load(out)
    note = f"resnet18 with torchvision's ImageNet weights ({path.name})"
    print(note)
    return model, variables, True, note


def _cached_resnet18() -> Path | None:
    try:
        from .port.hub import cache_path

        path = cache_path("resnet18", "IMAGENET1K_V1")
    except ImportError:  # no torch: the weights cannot be read either
        return None
    return path if path.is_file() else None


def skimage_photos(names=("chelsea", "coffee", "astronaut", "rocket")) -> dict:
    """scikit-image's sample photos (embedded, no download) as uint8 RGB arrays."""
    import skimage.data

    return {n: getattr(skimage.data, n)() for n in names}


# --- the command ----------------------------------------------------------------------


def select(only: list[int] | None) -> list[Path]:
    books = notebooks()
    if not only:
        return books
    numbers = {int(p.name[:2]): p for p in books}
    unknown = [n for n in only if n not in numbers]
    if unknown:
        raise ResNetJaxError(f"no course notebook numbered {unknown}; "
                             f"the notebooks are {', '.join(p.name for p in books)}")
    return [numbers[n] for n in only]


def run_notebook(path: Path, out: Path, fast: bool, log) -> tuple[int, float]:
    """Run one notebook as a fresh Python process; its output goes to ``log``.
    Returns (exit status, seconds)."""
    from .xla_cpu import with_cpu_flags

    env = dict(os.environ, **{OUT_ENV: str(out), FAST_ENV: "1" if fast else "0"})
    env.setdefault("MPLBACKEND", "Agg")
    env["XLA_FLAGS"] = with_cpu_flags(env.get("XLA_FLAGS", ""))  # the CLI's CPU tuning
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(path)], env=env, stdout=log,
                          stderr=subprocess.STDOUT, cwd=course_dir().parent)
    return proc.returncode, time.perf_counter() - t0


def copy_gallery(path: Path, out: Path, gallery: Path) -> list[str]:
    """Copy the figures a notebook listed in its results.json into ``gallery`` as
    ``<notebook>_<figure>.png``; a figure over the gallery's size limit is an error."""
    results = json.loads((out / path.stem / "results.json").read_text())
    gallery.mkdir(parents=True, exist_ok=True)
    copied = []
    for fig in results.get("figures", []):
        src = out / path.stem / fig
        size = src.stat().st_size
        if size > GALLERY_LIMIT:
            raise ResNetJaxError(f"{src} is {size // 1024} kB; gallery figures must stay "
                                 f"under {GALLERY_LIMIT // 1024} kB")
        dst = gallery / f"{path.stem}_{fig}"
        shutil.copyfile(src, dst)
        copied.append(str(dst))
    return copied


def run_course(args) -> int:
    """``resnet-jax course``: run the notebooks in order, one line each, then a summary."""
    books = select(args.only)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    mode = "fast" if args.fast else "full"
    print(f"course: {len(books)} notebook(s), {mode} run, writing to {out}", flush=True)
    rows, t_all = [], time.perf_counter()
    for i, path in enumerate(books, 1):
        print(f"[{i}/{len(books)}] {path.name} ...", flush=True)
        (out / path.stem).mkdir(parents=True, exist_ok=True)
        log_path = out / path.stem / "log.txt"
        with open(log_path, "w") as log:
            rc, secs = run_notebook(path, out, args.fast, log)
        status = "ok" if rc == 0 else f"FAILED (exit {rc}; see {log_path})"
        if rc != 0:
            tail = log_path.read_text().splitlines()[-15:]
            print("\n".join("    " + line for line in tail))
        elif args.gallery:
            copy_gallery(path, out, Path(args.gallery))
        print(f"[{i}/{len(books)}] {path.name} {status} in {secs:.1f} s", flush=True)
        rows.append((path.name, rc, secs))
    total = time.perf_counter() - t_all
    failed = [name for name, rc, _ in rows if rc != 0]
    print(f"course: {len(rows) - len(failed)}/{len(rows)} notebooks ran in {total:.1f} s "
          f"({mode}); outputs in {out}")
    for name, rc, secs in rows:
        print(f"  {name:<24} {'ok' if rc == 0 else 'FAILED':<7} {secs:6.1f} s")
    if failed:
        print(f"course: failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def register(sub) -> None:
    p = sub.add_parser("course", help="run the course's notebooks (course/*.py)",
                       description="Run the course's notebooks, one process each, and "
                                   "write their figures and results.json under --out.")
    p.add_argument("--fast", action="store_true",
                   help="small settings (a few minutes in all; what the tests run)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--only", type=int, nargs="+", metavar="N",
                   help="run only these notebooks, by number (e.g. --only 6 8)")
    p.add_argument("--gallery", metavar="DIR",
                   help="also copy each notebook's figures to DIR (docs/course for the docs)")
    p.set_defaults(func=run_course)
