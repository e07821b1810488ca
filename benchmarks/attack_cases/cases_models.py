"""``evaluate`` and every command that reads a damaged checkpoint."""

from __future__ import annotations

from . import checks
from . import setups as S
from .core import Case

EVAL = "H2 resnet_jax/train/evaluation.py"
CKPT = "H2 resnet_jax/checkpoint.py"
PREDICT = "H3 resnet_jax/commands.py (run_predict)"
EXPLAIN = "H3 resnet_jax/explain/cli.py"
CONVERT = "H1 resnet_jax/commands.py (convert)"
TRAIN = "H2 resnet_jax/train/loop.py"
EV = ["resnet-jax", "evaluate", "--checkpoint"]
RUN = "{work}/run"


def evaluate_cases() -> list[Case]:
    run = S.copy("run")
    return [
        Case("evaluate a run", [*EV, RUN], "ok", EVAL, "", setup=run,
             check=checks.reported_file_exists),
        Case("evaluate a NaN head", [*EV, "{work}/nan_model"], "ok", EVAL, "2",
             setup=S.copy("nan_model"), check=checks.nan_model_scores_zero),
        Case("evaluate a missing checkpoint", [*EV, "{work}/none"], "error", EVAL, ""),
        Case("evaluate an image as checkpoint", [*EV, "{rgb_jpg}"], "error", EVAL, ""),
        Case("evaluate an empty dir", [*EV, "{work}"], "error", EVAL, ""),
        Case("evaluate a data folder", [*EV, "{data_good}"], "error", EVAL, ""),
        Case("evaluate an evil .pth", [*EV, "{evil_pth}"], "error", EVAL, "1"),
        Case("evaluate --dataset with 5 classes", [*EV, RUN, "--dataset",
             "synthetic:classes=5,size=16,n=60"], "error", EVAL, "", setup=run),
        Case("evaluate --dataset nosuch", [*EV, RUN, "--dataset", "nosuch"], "error", EVAL, "",
             setup=run),
        Case("evaluate --dataset mnist without files", [*EV, RUN, "--dataset",
             "mnist:{data_mnist_empty}"], "error", EVAL, "", setup=run),
        Case("evaluate --batch-size 0", [*EV, RUN, "--batch-size", "0"], "error", EVAL, "",
             setup=run),
        Case("evaluate --batch-size -1", [*EV, RUN, "--batch-size", "-1"], "error", EVAL, "",
             setup=run),
        Case("evaluate --split bogus", [*EV, RUN, "--split", "bogus"], "error", EVAL, "", setup=run),
        Case("evaluate a 1000-class model on 3 classes", [*EV, "{work}/model18", "--dataset",
             "synthetic:classes=3,size=16,n=48"], "error", EVAL, "", setup=S.copy("model18")),
        Case("evaluate --output /dev/full", [*EV, RUN, "--output", "{work}/full.png"], "error",
             EVAL, "11", setup=S.chain(run, S.dev_full("full.png")), protect=("{work}/full.png",),
             status=1),
        Case("evaluate --output in a read-only dir", [*EV, RUN, "--output", "{readonly}/c.png"],
             "error", EVAL, "11", setup=run, no_dac=True, status=1),
        Case("evaluate --output an existing dir", [*EV, RUN, "--output", "{work}/pngs"], "ok", EVAL,
             "15", setup=S.chain(run, lambda ctx: (ctx.work / "pngs").mkdir()),
             check=checks.reported_file_exists),
        Case("evaluate --output with missing parents", [*EV, RUN, "--output", "{work}/a/b/c.png"],
             "any", EVAL, "11", setup=run, check=checks.file_written("{work}/a/b/c.png")),
        Case("evaluate --output under a file", [*EV, RUN, "--output", "{work}/file.txt/c.png"],
             "error", EVAL, "11", setup=S.chain(run, S.a_file()), protect=("{work}/file.txt",),
             status=1),
        Case("evaluate disk full keeps the old picture", [*EV, RUN, "--output", "{work}/old.png"],
             "error", EVAL, "10", setup=S.chain(run, S.copy("white", "old.png")),
             protect=("{work}/old.png",), fsize=1024, env={"RESNET_JAX_CACHE": "off"}, status=1),
        Case("evaluate --output onto a full disk", [*EV, RUN, "--output", "{work}/full/c.png"],
             "error", EVAL, "10", setup=S.chain(run, S.full_disk(free=0)), status=1),
    ]


# Every damage for evaluate; the commands that share its loader get the main kinds.
FOUR = ("invalid JSON config", "truncated variables", "bit-flipped variables",
        "deleted variables item")


def _readers(damage: str) -> list[tuple[str, list[str], str]]:
    """(command, argv, owner) of each command given the damaged step ``{work}/run/2``."""
    step = "{work}/run/2"
    out = [("evaluate", [*EV, step], EVAL)]
    if damage in FOUR[:3:2]:
        out += [
            ("predict", ["resnet-jax", "predict", "--weights", step, "{rgb_jpg}"], PREDICT),
            ("convert --to-torch", ["resnet-jax", "convert", "--to-torch", step, "--out",
                                    "{work}/x.pth"], CONVERT),
        ]
    if damage == FOUR[0]:
        out.append(("gradcam", ["resnet-jax", "gradcam", "--weights", step, "{rgb_jpg}", "--out",
                                "{work}/maps"], EXPLAIN))
    if damage == FOUR[2]:
        out += [
            ("visualize", ["resnet-jax", "visualize", "--weights", step, "--class", "0",
                           "--steps", "2", "--out", "{work}/g.png"], EXPLAIN),
            ("train --init-from", ["resnet-jax", "train", "--dataset",
                                   "synthetic:classes=3,size=16,n=48", "--batch-size", "8",
                                   "--max-steps", "1", "--no-progress", "--init-from", step,
                                   "--output", "{work}/ft"], TRAIN),
        ]
    return out


def damaged_cases() -> list[Case]:
    cases = []
    for damage in S.DAMAGES:
        for cmd, argv, owner in _readers(damage):
            cases.append(Case(f"{cmd}: step with {damage}", argv, "error", f"{CKPT}; {owner}",
                              "13" if "JSON" in damage or "widths" in damage or "deleted" in damage
                              else "6", setup=S.damaged_run(damage), protect=("{work}/run/1",)))
    for damage in ("truncated variables", "bit-flipped variables"):
        cases.append(Case(f"evaluate run dir, latest step {damage}", [*EV, RUN], "any",
                          f"{CKPT}; {EVAL}", "6", setup=S.damaged_run(damage),
                          check=checks.fell_back, protect=("{work}/run/1",)))
    return cases


def cases() -> list[Case]:
    return evaluate_cases() + damaged_cases()
