"""``train``: arguments out of range, bad data sets, bad outputs, resume mismatches."""

from __future__ import annotations

from . import checks
from . import setups as S
from .core import Case, read_jsonl
from .fixtures import TINY_TRAIN

TRAIN = "H2 resnet_jax/train/cli.py, train/loop.py"
DATA = "H2 resnet_jax/data/datasets.py"
CKPT = "H2 resnet_jax/checkpoint.py, train/checkpoints.py"
BASE = ["resnet-jax", "train", *TINY_TRAIN, "--output", "{work}/out"]
FOLDER = ["--image-size", "16"]
DIGITS = ("set -e; resnet-jax train --arch digit_cnn --dataset synthetic:classes=3,size=28,n=48,"
          "channels=1 --batch-size 8 --max-steps 2 --epochs 1 --no-progress --no-plots "
          "--no-tensorboard --output d; resnet-jax evaluate --checkpoint d; "
          "resnet-jax predict --weights d {gray8}; resnet-jax gradcam --weights d {gray8} --out m")

# name suffix, extra arguments (later ones override the base's), issue item
BAD_ARGS = [
    ("--epochs 0", ["--epochs", "0"], "4"), ("--epochs -1", ["--epochs", "-1"], "4"),
    ("--max-steps -1", ["--max-steps", "-1"], "4"), ("--max-steps 0", ["--max-steps", "0"], "4"),
    ("--image-size 0", ["--image-size", "0"], "4"), ("--image-size -8", ["--image-size", "-8"], "4"),
    ("--devices 0", ["--devices", "0"], "4"), ("--devices 64", ["--devices", "64"], ""),
    ("--lr -0.1", ["--lr", "-0.1"], "4"), ("--lr nan", ["--lr", "nan"], "4"),
    ("--lr inf", ["--lr", "inf"], "4"),
    ("--label-smoothing 1", ["--label-smoothing", "1"], "4"),
    ("--label-smoothing -0.1", ["--label-smoothing", "-0.1"], "4"),
    ("--label-smoothing nan", ["--label-smoothing", "nan"], "4"),
    ("--clip-norm 0", ["--clip-norm", "0"], "4"), ("--clip-norm -1", ["--clip-norm", "-1"], "4"),
    ("--warmup-epochs -1", ["--warmup-epochs", "-1"], "4"),
    ("--workers -1", ["--workers", "-1"], "4"),
    ("--eval-every 0", ["--eval-every", "0"], "4"),
    ("--stage-widths 0,64", ["--stage-widths", "0,64,128,256"], "4"),
    ("--stage-widths -8", ["--stage-widths", "-8,16,32,64"], "4"),
    ("--stage-widths of 2 for 4 stages", ["--stage-widths", "8,16"], ""),
    ("--stage-sizes 0,1", ["--stage-sizes", "0,1,1,1"], ""),
    ("--batch-size 0", ["--batch-size", "0"], ""), ("--batch-size -4", ["--batch-size", "-4"], ""),
    ("--batch-size 512 > data", ["--batch-size", "512"], "suite"),
    ("--val-fraction 1.5", ["--val-fraction", "1.5"], ""),
    ("--val-fraction -0.1", ["--val-fraction", "-0.1"], ""),
    ("--test-fraction 1.0", ["--test-fraction", "1.0"], ""),
    ("--test+val fractions 1.2", ["--test-fraction", "0.6", "--val-fraction", "0.6"], ""),
    ("--keep 0", ["--keep", "0"], ""), ("--keep -1", ["--keep", "-1"], ""),
    ("--checkpoint-every -1", ["--checkpoint-every", "-1"], ""),
    ("--weight-decay -1", ["--weight-decay", "-1"], ""),
    ("--weight-decay nan", ["--weight-decay", "nan"], ""),
    ("--momentum nan", ["--momentum", "nan"], ""),
    ("--arch nosuch", ["--arch", "resnet19"], ""),
    ("--precision fp16", ["--precision", "fp16"], ""),
    ("--optimizer adam", ["--optimizer", "adam"], ""),
    ("--channels 2", ["--channels", "2"], ""),
    ("--num-processes 0", ["--num-processes", "0"], ""),
    ("--init-from missing", ["--init-from", "{work}/no_such_model"], ""),
    ("--init-from an image", ["--init-from", "{rgb_jpg}"], ""),
    ("--init-from evil .pth", ["--init-from", "{evil_pth}"], "1"),
    ("--init-from a data folder", ["--init-from", "{data_good}"], ""),
    ("--lr 1e30 diverges", ["--lr", "1e30", "--max-steps", "4"], "suite"),
]

BAD_DATASETS = [
    ("synthetic:classes=0", "4"), ("synthetic:classes=1", "4"),
    ("synthetic:n=0", ""), ("synthetic:size=0", ""), ("synthetic:channels=2", ""),
    ("synthetic:foo=1", ""), ("synthetic:classes=abc", ""), ("synthetic:classes", ""),
    ("nosuch", ""), ("", ""), ("mnist:{work}/no_such_dir", ""),
    ("mnist:{data_mnist_empty}", ""), ("mnist:{data_mnist_garbage}", ""),
    ("folder:{work}/no_such_dir", ""), ("{data_noclass}", ""), ("{data_emptyclass}", "suite"),
    ("{data_oneclass}", "4"), ("{data_valonly}", "5"), ("{rgb_jpg}", ""),
]


def argument_cases() -> list[Case]:
    cases = [Case(f"train {name}", [*BASE, *extra], "error", TRAIN, item)
             for name, extra, item in BAD_ARGS]
    cases += [Case(f"train --dataset {spec or repr(spec)}", [*BASE, "--dataset", spec, *FOLDER],
                   "error", DATA, item) for spec, item in BAD_DATASETS]
    cases += [
        Case("train --dataset broken folder --strict",
             [*BASE, "--dataset", "{data_broken}", *FOLDER, "--strict"], "error", DATA, "suite",
             mentions=("broken.png",)),
        Case("train --dataset broken folder warns once per file",
             [*BASE, "--dataset", "{data_broken}", *FOLDER], "ok", DATA, "5",
             check=checks.named_once("broken.png")),
        Case("train --dataset a good folder", [*BASE, "--dataset", "{data_good}", *FOLDER],
             "ok", DATA, "", check=checks.file_written("{work}/out/metrics.jsonl")),
        Case("train --skip-unknown-classes names the val-only class",
             [*BASE, "--dataset", "{data_valonly}", *FOLDER, "--skip-unknown-classes"], "ok", DATA,
             "5", check=checks.mentions("zebra")),
        Case("train, evaluate, predict, gradcam a 1-channel digit_cnn", ["bash", "-c", DIGITS],
             "ok", DATA, "", check=checks.mentions("test accuracy", "accuracy", "gray8")),
        Case("train --freeze-backbone without --init-from", [*BASE, "--freeze-backbone"],
             "any", TRAIN, ""),
    ]
    return cases


def output_cases() -> list[Case]:
    base = [a for a in BASE if a not in ("--output", "{work}/out")]
    return [
        Case("train --output is a file", [*base, "--output", "{work}/file.txt"], "error", TRAIN,
             "11", setup=S.a_file(), protect=("{work}/file.txt",), status=1),
        Case("train --output in a read-only dir", [*base, "--output", "{readonly}/run"], "error",
             TRAIN, "11", no_dac=True, status=1),
        Case("train --output /dev/full", [*base, "--output", "{work}/devfull"], "error", TRAIN,
             "11", setup=S.dev_full(), protect=("{work}/devfull",)),
        Case("train --output with missing parents", [*base, "--output", "{work}/a/b/run"], "any",
             TRAIN, "11", check=checks.file_written("{work}/a/b/run/metrics.jsonl")),
        Case("train --output under a file", [*base, "--output", "{work}/file.txt/run"], "error",
             TRAIN, "11", setup=S.a_file(), protect=("{work}/file.txt",), status=1),
        Case("train disk full (file-size limit)", [*base, "--output", "{work}/out"], "error",
             TRAIN, "11", fsize=200_000, env={"RESNET_JAX_CACHE": "off"}, status=1),
        Case("train --resume disk full keeps saved steps",
             [*base, "--output", "{work}/run", "--resume", "--max-steps", "4"], "error", TRAIN,
             "11", setup=S.copy("run"), protect=("{work}/run/1", "{work}/run/2"), fsize=200_000,
             env={"RESNET_JAX_CACHE": "off"}, status=1),
        Case("train onto a full disk", [*base, "--output", "{work}/full/run"], "error", TRAIN,
             "11", setup=S.full_disk(), env={"RESNET_JAX_CACHE": "off"}, status=1),
        Case("train --resume on a full disk keeps saved steps",
             [*base, "--output", "{work}/full/run", "--resume", "--max-steps", "4"], "error",
             TRAIN, "11", setup=S.full_disk(size_mb=320, then=S.copy_into("run", "run")),
             protect=("{work}/full/run/1", "{work}/full/run/2"),
             env={"RESNET_JAX_CACHE": "off"}, status=1),
        Case("train --output over unrelated files", [*base, "--output", "{work}/important"],
             "any", TRAIN, "8", setup=S.unrelated(), protect=("{work}/important",)),
        Case("train existing run without --resume", [*base, "--output", "{work}/run"], "error",
             TRAIN, "suite", setup=S.copy("run"), protect=("{work}/run",)),
    ]


def resume_cases() -> list[Case]:
    base = [a for a in BASE if a not in ("--output", "{work}/out")]
    run = [*base, "--output", "{work}/run", "--resume"]
    fallback = checks.fell_back
    cases = [
        Case("train --resume continues, each step once", [*run, "--max-steps", "4"], "ok", TRAIN,
             "16", setup=S.copy("run"), check=unique_steps),
        Case("train --resume with another --arch", [*run, "--arch", "resnet34"], "error", TRAIN,
             "4", setup=S.copy("run"), protect=("{work}/run",), mentions=("resnet34", "resnet18")),
        Case("train --resume with other --stage-widths",
             [*run, "--stage-widths", "32,64,128,256"], "error", TRAIN, "4", setup=S.copy("run"),
             protect=("{work}/run",)),
        Case("train --resume with other classes", [*run, "--dataset",
             "synthetic:classes=5,size=16,n=60"], "error", TRAIN, "suite", setup=S.copy("run"),
             protect=("{work}/run",)),
        Case("train --resume with another --image-size", [*run, "--image-size", "8"], "error",
             TRAIN, "4", setup=S.copy("run"), protect=("{work}/run",)),
        Case("train --resume with another --optimizer", [*run, "--optimizer", "adamw"], "error",
             TRAIN, "4", setup=S.copy("run"), protect=("{work}/run",)),
        Case("train --resume diverging after a fallback names an intact step",
             [*run, "--lr", "1e38", "--warmup-epochs", "0", "--max-steps", "4"], "error", CKPT,
             "6", setup=S.damaged_run("bit-flipped variables"), check=last_good_is_intact),
        Case("train --resume of nothing", [*base, "--output", "{work}/none", "--resume"], "error",
             TRAIN, ""),
        Case("train --resume of unrelated files", [*base, "--output", "{work}/important",
             "--resume"], "error", TRAIN, "", setup=S.unrelated(), protect=("{work}/important",)),
        Case("train --resume with both steps truncated", [*run, "--max-steps", "4"], "error",
             CKPT, "6", setup=S.damaged_run("truncated variables", (1, 2))),
    ]
    for damage in ("truncated variables", "bit-flipped variables", "deleted variables item",
                   "invalid JSON config", "emptied variables files"):
        cases.append(Case(f"train --resume, latest step: {damage}", [*run, "--max-steps", "4"],
                          "ok", CKPT, "6", setup=S.damaged_run(damage),
                          protect=("{work}/run/1",), check=fallback))
    return cases


def last_good_is_intact(ctx):
    """After falling back from damaged step 2, "the last good checkpoint" is never step 2."""
    import re

    m = re.search(r"last good checkpoint[^;\n]*", ctx.result.err + ctx.result.out)
    if m and re.search(r"\b2\b", m.group(0)):
        return f"names the damaged step as good: {m.group(0)[:120]}"
    return None


def unique_steps(ctx):
    recs = [r for r in read_jsonl(ctx.work / "run" / "metrics.jsonl") if r.get("kind") == "train"]
    steps = [r["step"] for r in recs]
    if len(steps) != len(set(steps)):
        return f"metrics.jsonl repeats steps: {steps}"
    if max(steps, default=0) < 4:
        return f"resume did not reach step 4: {steps}"
    return None


def cases() -> list[Case]:
    return argument_cases() + output_cases() + resume_cases()
