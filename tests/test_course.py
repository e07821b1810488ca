"""The course, slide 1 to 9: every notebook in course/ runs (fast settings) through the
``resnet-jax course`` command, and what each slide claims holds in the numbers it wrote
(each notebook's results.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from resnet_jax import cli
from resnet_jax import course as course_mod

NOTEBOOKS = [p.stem for p in course_mod.notebooks()]

# The course runs once, on one xdist worker, for all the tests that read it (the Makefile's
# pytest runs use --dist loadgroup).
pytestmark = pytest.mark.xdist_group("course")


@pytest.fixture(scope="module")
def course_run(tmp_path_factory):
    """``resnet-jax course --fast`` once for the module: (exit status, output folder).
    The whole course is a long journey: the tests that read it run with make test-slow."""
    out = tmp_path_factory.mktemp("course")
    return cli.main(["course", "--fast", "--out", str(out)]), out


def results(course_run, name: str) -> dict:
    _, out = course_run
    path = out / name / "results.json"
    assert path.is_file(), f"{name} wrote no results.json; its log: {out / name / 'log.txt'}"
    return json.loads(path.read_text())


def test_the_course_has_the_nine_slides_as_notebooks():
    assert [n[:2] for n in NOTEBOOKS] == [f"{i:02d}" for i in range(1, 10)]
    for p in course_mod.notebooks():
        text = p.read_text()
        assert text.count("# %% [markdown]") >= 2 and "# %%\n" in text, p  # jupytext percent
        assert "format_name: percent" in text, p


def test_jupyter_opens_each_notebook_with_its_markdown_and_code_cells():
    """jupytext reads each file as a notebook whose cells are the file's cells, and writes
    their text back unchanged (what Jupyter shows is what the script runs)."""
    jupytext = pytest.importorskip("jupytext")
    for p in course_mod.notebooks():
        text = p.read_text()
        nb = jupytext.reads(text, fmt="py:percent")
        kinds = {c.cell_type for c in nb.cells}
        assert kinds == {"markdown", "code"}, p
        assert sum(c.cell_type == "code" for c in nb.cells) == text.count("# %%\n"), p
        body = jupytext.writes(nb, fmt="py:percent").split("# ---\n", 2)[-1]
        assert body.strip() == text.split("# ---\n", 2)[-1].strip(), p


@pytest.mark.slow
def test_every_notebook_runs_and_writes_its_figures(course_run):
    rc, out = course_run
    assert rc == 0, [(n, (out / n / "log.txt").read_text()[-2000:]) for n in NOTEBOOKS
                     if not (out / n / "results.json").is_file()]
    for name in NOTEBOOKS:
        r = results(course_run, name)
        assert r["fast"] is True and r["figures"], name
        for fig in r["figures"]:
            data = (out / name / fig).read_bytes()
            assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, (name, fig)


@pytest.mark.slow
def test_blocks_keep_or_halve_the_shape_and_add_the_shortcut(course_run):
    blocks = results(course_run, "01_blocks")["blocks"]
    assert blocks["BasicBlock, stride 2"]["output"] == [1, 28, 28, 128]
    assert blocks["Bottleneck, stride 2"]["shortcut"] == [1, 28, 28, 512]
    assert blocks["BasicBlock, stride 1"]["shortcut_kind"] == "identity"
    for name, b in blocks.items():
        assert b["branch"] == b["shortcut"] == b["output"], name
        assert b["max_abs_diff"] < 1e-5, name


@pytest.mark.slow
def test_shape_trace_equals_the_slides(course_run):
    r = results(course_run, "02_my_resnet")
    assert list(r["trace"].values()) == [112, 56, 56, 28, 128, 2]
    assert r["trace"] == r["slide_trace"]
    assert r["resnet18_repr_equals_torchvision"] is True  # torch is installed for the tests


@pytest.mark.slow
def test_hand_batchnorm_equals_the_layer(course_run):
    r = results(course_run, "03_batchnorm")
    for key in ("diff_train", "diff_eval", "diff_running_mean", "diff_running_var",
                "diff_torch_eval", "diff_torch_running"):
        assert r[key] < 1e-5, key
    assert r["num_batches_tracked"] == r["steps"] == 3


@pytest.mark.slow
def test_pretrained_top5_or_random_weights_said_so(course_run):
    r = results(course_run, "04_pretrained")
    assert set(r["top5"]) == {"chelsea", "coffee", "astronaut", "rocket"}
    assert all(len(v) == 5 for v in r["top5"].values())
    if not r["pretrained"]:
        assert "RANDOM WEIGHTS" in r["note"]


@pytest.mark.slow
def test_why_deep_table_has_matched_parameter_counts(course_run):
    r = results(course_run, "05_why_deep")
    assert r["seeds"] >= 3
    assert [row["depth"] for row in r["fc_rows"]][0] == 1 and len(r["fc_rows"]) >= 5
    for row in r["fc_rows"][1:]:
        assert abs(row["wide_params"] - row["params"]) <= 0.05 * row["params"], row
    counts = [row["params"] for row in r["resnet_rows"]]
    assert len(counts) >= 2 and len({row["blocks_per_stage"] for row in r["resnet_rows"]}) >= 2
    assert max(counts) <= 1.05 * min(counts), counts
    assert r["conclusion"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["06_filters", "07_fc_neurons"])
def test_optimised_inputs_activate_their_unit_more_than_any_training_digit(course_run, name):
    r = results(course_run, name)
    assert r["test_accuracy"] > 0.9
    dead = set(r["dead"])
    units = r.get("neurons") or list(range(r["filters"]))
    live = [i for i, u in enumerate(units) if u not in dead]
    assert len(live) >= 9
    assert all(r["optimised_beats_real"][i] for i in live), r["optimised_beats_real"]


@pytest.mark.slow
def test_class_images_are_their_class_and_the_l1_prior_halves_the_ink(course_run):
    r = results(course_run, "08_classes")
    assert r["min_p_plain"] > 0.9  # y_i maximised: each image is its class
    assert r["halving_lambda"] is not None and r["halving_lambda"] > 0
    assert r["min_p_halving"] > 0.9 and r["ink_ratio_halving"] <= 0.5


@pytest.mark.slow
def test_gradcam_localises_the_known_patch(course_run):
    r = results(course_run, "09_gradcam")
    assert r["accuracy"] > 0.95
    assert r["peak_inside"] >= 0.9
    assert r["mass_inside"] > 2 * r["patch_area"]


def test_course_command_names_the_notebooks_when_one_is_unknown(capsys, tmp_path):
    assert cli.main(["course", "--only", "42", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no course notebook numbered [42]" in err and "01_blocks.py" in err


def test_notebook_reads_its_output_folder_and_fast_flag(tmp_path, monkeypatch):
    monkeypatch.delenv(course_mod.OUT_ENV, raising=False)
    monkeypatch.delenv(course_mod.FAST_ENV, raising=False)
    s = course_mod.session("06_filters.py", [str(tmp_path), "--fast"])
    assert s.fast and s.out == tmp_path / "06_filters"
    monkeypatch.setenv(course_mod.OUT_ENV, str(tmp_path / "env"))
    monkeypatch.setenv(course_mod.FAST_ENV, "0")
    s = course_mod.session("06_filters.py", [])
    assert not s.fast and s.out == Path(tmp_path / "env" / "06_filters")
    assert json.loads((s.out / "results.json").read_text())["notebook"] == "06_filters"
