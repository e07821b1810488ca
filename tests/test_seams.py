"""The journey a user takes, end to end: train a model with ``python train.py``, then ask
``predict``, ``gradcam`` and ``visualize`` about images saved as files; they must see the
model exactly as ``resnet-jax evaluate`` sees it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnet_jax.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """``python train.py`` on its defaults (the course's ResNet on the digits), shortened."""
    out = tmp_path_factory.mktemp("seam") / "run"
    env = {**os.environ, "RESNET_JAX_CACHE": "off"}
    r = subprocess.run([sys.executable, "train.py", "--epochs", "5", "--output", str(out),
                        "--no-plots", "--no-tensorboard"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def _eval_loader_forward(run):
    """Per-image class probabilities of the whole test split, through the evaluation
    loader and normalisation that ``resnet-jax evaluate`` uses."""
    import jax

    from resnet_jax.checkpoint import load, load_config
    from resnet_jax.data import Loader, Preprocess, load_splits
    from resnet_jax.train.step import normalize

    config = load_config(run)
    model, variables = load(run)
    test = load_splits(config["dataset"])["test"]
    pre = Preprocess.from_json(config["preprocess"])
    probs = []
    loader = Loader(test, 64, train=False, preprocess=pre)
    for b in range(len(loader)):
        batch = loader.batch(0, b)
        logits = model.apply(variables, normalize(batch["image"], pre.mean, pre.std), train=False)
        probs.append(np.asarray(jax.nn.softmax(logits))[batch["mask"] > 0])
    return test, np.concatenate(probs)


def test_trained_model_is_seen_alike_by_predict_gradcam_and_evaluate(trained_run, tmp_path,
                                                                     capsys):
    test, probs = _eval_loader_forward(trained_run)
    preds = probs.argmax(1)
    rc = main(["evaluate", "--checkpoint", str(trained_run), "--output", str(tmp_path / "cm.png")])
    out = capsys.readouterr().out
    assert rc == 0
    acc = float(re.search(r"accuracy ([0-9.]+)%", out).group(1))
    assert acc == pytest.approx(100 * np.mean(preds == test.labels), abs=0.006)

    n = 16
    files = []
    for i in range(n):  # the test split's own pixels, as a user would have them on disk
        files.append(tmp_path / "digits" / f"{i:02d}_true{test.labels[i]}.png")
        files[-1].parent.mkdir(exist_ok=True)
        Image.fromarray(test.image(i)[..., 0]).save(files[-1])
    assert len(set(preds[:n].tolist())) >= 3, "the model should have learned something"

    rc = main(["predict", "--weights", str(trained_run), "--top", "1", *map(str, files)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    rows = re.findall(r"^\s+([0-9.]+)%\s+(\d+)\s+(\S+)$", out, re.M)
    assert [int(r[1]) for r in rows] == preds[:n].tolist()
    assert [r[2] for r in rows] == [str(k) for k in preds[:n]]  # the model's class names
    np.testing.assert_allclose([float(r[0]) / 100 for r in rows], probs[np.arange(n), preds[:n]],
                               atol=2e-6)

    rc = main(["gradcam", "--weights", str(trained_run), *map(str, files),
               "--out", str(tmp_path / "cams")])
    out, err = capsys.readouterr()
    assert rc == 0, err
    rows = re.findall(r": \S+ \((\d+)\) p=([0-9.]+) -> (\S+)$", out, re.M)
    assert [int(r[0]) for r in rows] == preds[:n].tolist()
    np.testing.assert_allclose([float(r[1]) for r in rows], probs[np.arange(n), preds[:n]],
                               atol=6e-4)
    assert all(Path(r[2]).is_file() for r in rows)


@pytest.mark.slow
def test_l1_prior_pulls_pixels_to_the_models_no_ink(trained_run, tmp_path, capsys):
    rc = main(["visualize", "--weights", str(trained_run), "--class", "0-9",
               "--l1", "0.1", "--steps", "100", "--out", str(tmp_path / "l1.png")])
    out = capsys.readouterr().out
    assert rc == 0
    ink = float(re.search(r"ink ([0-9.]+)%", out).group(1))
    assert ink > 1.0, out  # not all black: the L1 prior's zero is the data's background

    from resnet_jax.explain import load_model, maximize
    from resnet_jax.explain import objectives as O

    m = load_model(trained_run)
    plain, sparse = O.class_log_prob(range(10)), O.class_log_prob(range(10)) - 0.03 * O.l1()
    images = maximize(m.model, m.variables, O.stack([plain, sparse]), steps=100,
                      preprocess=m.preprocess)
    assert images.shape == (20, 12, 12, 1) and images.min() >= 0 and images.max() <= 1
    logits = m.model.apply(m.variables, m.preprocess.normalize(images), train=False)
    assert np.asarray(np.argmax(np.asarray(logits), -1)).tolist() == list(range(10)) * 2
    ink_plain, ink_sparse = np.mean(images[:10] > 0.05), np.mean(images[10:] > 0.05)
    assert 0 < ink_sparse < ink_plain, (ink_sparse, ink_plain)
