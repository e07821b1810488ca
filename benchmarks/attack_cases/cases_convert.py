"""``convert`` / ``convert_weights.py`` and ``summary``: pickles, damaged and mismatched
weights, named weights from a planted cache, outputs that must not be replaced."""

from __future__ import annotations

from . import checks
from . import setups as S
from .core import Case

CONVERT = "H1 resnet_jax/commands.py (convert)"
PORT = "H1 resnet_jax/port/files.py, port/convert.py"
HUB = "H1 resnet_jax/port/hub.py"
SUMMARY = "H1 resnet_jax/commands.py (run_summary), summary.py"
CW = ["convert_weights.py"]
OUT = ["--out", "{work}/out"]

# name, --weights value, extra arguments, owner, item
BAD_SOURCES = [
    ("evil .pth", "{evil_pth}", [], PORT, "1"), ("evil .pt", "{evil_pt}", [], PORT, "1"),
    ("evil .bin", "{evil_bin}", [], PORT, "1"), ("evil .ckpt", "{evil_ckpt}", [], PORT, "1"),
    ("evil .tar", "{evil_tar}", [], PORT, "1"),
    ("evil value in a state dict", "{evil_dict}", [], PORT, "1"),
    ("evil legacy pickle", "{evil_legacy}", [], PORT, "1"),
    ("evil .pkl", "{evil_pkl}", [], PORT, "1"),
    ("named resnet34 planted pickle", "IMAGENET1K_V1", ["--arch", "resnet34"], HUB, "1"),
    ("named resnet18 with a wrong hash", "IMAGENET1K_V1", ["--arch", "resnet18"], HUB, "1"),
    ("named resnet50 truncated in cache", "IMAGENET1K_V2", ["--arch", "resnet50"], HUB, "1"),
    ("named weights unknown name", "IMAGENET9K_V9", ["--arch", "resnet18"], HUB, ""),
    ("named weights without --arch", "IMAGENET1K_V1", [], CONVERT, ""),
    ("named weights of an arch without any", "IMAGENET1K_V1", ["--arch", "my_resnet"], HUB, ""),
    ("unknown --arch", "{r18_pth}", ["--arch", "resnet19"], PORT, ""),
    ("--arch resnet50 for resnet18 weights", "{r18_pth}", ["--arch", "resnet50"], PORT, "suite"),
    ("a missing key, no --arch", "{r18_missing_key}", [], PORT, "14"),
    ("an unexpected key, no --arch", "{r18_extra_key}", [], PORT, "14"),
    ("a mismatched shape, no --arch", "{r18_wrong_shape}", [], PORT, "14"),
    ("a missing key with --arch", "{r18_missing_key}", ["--arch", "resnet18"], PORT, ""),
    ("truncated .pth", "{r18_trunc}", [], PORT, "suite"), ("empty .pth", "{r18_empty}", [], PORT, ""),
    ("bit-flipped zip header", "{r18_flip}", [], PORT, ""),
    ("truncated .safetensors", "{r18_st_trunc}", [], PORT, ""),
    ("a text file named .pth", "{text_pth}", [], PORT, ""),
    ("a list, not a state dict", "{not_a_dict}", [], PORT, ""),
    ("an image as weights", "{rgb_jpg}", [], PORT, ""),
    ("a directory as weights", "{data_good}", [], CONVERT, ""),
    ("a missing .pth", "{work}/none.pth", [], PORT, ""),
    ("--num-classes 0", "{r18_pth}", ["--num-classes", "0"], CONVERT, ""),
    ("--num-classes -1", "{r18_pth}", ["--num-classes", "-1"], CONVERT, ""),
]


def source_cases() -> list[Case]:
    cases = [Case(f"convert {name}", [*CW, "--weights", src, *extra, *OUT], "error", owner, item)
             for name, src, extra, owner, item in BAD_SOURCES]
    cases += [
        Case("convert .pth", [*CW, "--weights", "{r18_pth}", *OUT], "ok", CONVERT, "",
             check=checks.model_dir("{work}/out", 1000)),
        Case("convert .safetensors", ["resnet-jax", "convert", "--weights", "{r18_st}", *OUT], "ok",
             CONVERT, "", check=checks.model_dir("{work}/out", 1000)),
        Case("convert a 10-class head", [*CW, "--weights", "{r18_fc10}", *OUT], "ok", PORT, "",
             check=checks.model_dir("{work}/out", 10)),
        Case("convert --num-classes 10", [*CW, "--weights", "{r18_pth}", "--num-classes", "10",
             *OUT], "ok", CONVERT, "", check=checks.model_dir("{work}/out", 10)),
        Case("convert --verify", [*CW, "--weights", "{r18_pth}", "--verify", *OUT], "ok", CONVERT,
             "", check=checks.model_dir("{work}/out", 1000)),
        Case("convert NaN weights --verify", [*CW, "--weights", "{r18_nan}", "--verify", *OUT],
             "error", CONVERT, ""),
        Case("convert both --weights and --to-torch", [*CW, "--weights", "{r18_pth}",
             "--to-torch", "{model18}", *OUT], "error", CONVERT, ""),
        Case("convert neither --weights nor --to-torch", [*CW, *OUT], "error", CONVERT, ""),
        Case("convert without --out", [*CW, "--weights", "{r18_pth}"], "error", CONVERT, ""),
    ]
    return cases


def out_cases() -> list[Case]:
    src = [*CW, "--weights", "{r18_pth}", "--out"]
    prev = S.copy("model18", "prev")
    return [
        Case("convert --out an existing model", [*src, "{work}/prev"], "error", CONVERT, "suite",
             setup=prev, protect=("{work}/prev",)),
        Case("convert --overwrite a previous model", [*src, "{work}/prev", "--overwrite"], "ok",
             CONVERT, "8", setup=prev, check=checks.model_dir("{work}/prev", 1000)),
        Case("convert --overwrite unrelated files", [*src, "{work}/important", "--overwrite"],
             "error", CONVERT, "8", setup=S.unrelated(), protect=("{work}/important",)),
        Case("convert --overwrite an unrelated file", [*src, "{work}/file.txt", "--overwrite"],
             "error", CONVERT, "8", setup=S.a_file(), protect=("{work}/file.txt",)),
        Case("convert --out an existing file", [*src, "{work}/file.txt"], "error", CONVERT, "11",
             setup=S.a_file(), protect=("{work}/file.txt",)),
        Case("convert --out in a read-only dir", [*src, "{readonly}/m"], "error", CONVERT, "11",
             no_dac=True, status=1),
        Case("convert --out with missing parents", [*src, "{work}/a/b/m"], "any", CONVERT, "11",
             check=checks.model_dir("{work}/a/b/m")),
        Case("convert --out under a file", [*src, "{work}/file.txt/m"], "error", CONVERT, "11",
             setup=S.a_file(), protect=("{work}/file.txt",), status=1),
        Case("convert --out /dev/full", [*src, "{work}/devfull"], "error", CONVERT, "11",
             setup=S.dev_full(), protect=("{work}/devfull",)),
        Case("convert onto a full disk", [*src, "{work}/full/m"], "error", CONVERT, "11",
             setup=S.full_disk(), status=1),
        Case("convert --overwrite a model on a full disk", [*src, "{work}/full/prev",
             "--overwrite"], "error", CONVERT, "11", status=1, protect=("{work}/full/prev",),
             setup=S.full_disk(size_mb=128, then=S.copy_into("model18", "prev"))),
        Case("convert disk full (file-size limit)", [*src, "{work}/m"], "error", CONVERT, "11",
             fsize=1_000_000, env={"RESNET_JAX_CACHE": "off"}, status=1),
        Case("convert disk full over a previous model", [*src, "{work}/prev", "--overwrite"],
             "error", CONVERT, "11", setup=prev, protect=("{work}/prev",), fsize=1_000_000,
             env={"RESNET_JAX_CACHE": "off"}, status=1),
    ]


def to_torch_cases() -> list[Case]:
    tt = [*CW, "--to-torch"]
    return [
        Case("--to-torch round trip is exact", [*tt, "{model18}", "--out", "{work}/r.pth"], "ok",
             CONVERT, "", check=checks.same_state_dict("{work}/r.pth")),
        Case("--to-torch .safetensors round trip", [*tt, "{model18}", "--out",
             "{work}/r.safetensors"], "ok", CONVERT, "",
             check=checks.same_state_dict("{work}/r.safetensors")),
        Case("--to-torch --out .txt", [*tt, "{model18}", "--out", "{work}/r.txt"], "error",
             CONVERT, ""),
        Case("--to-torch --out /dev/full", [*tt, "{model18}", "--out", "{work}/full.pth"],
             "error", CONVERT, "10", setup=S.dev_full("full.pth"), protect=("{work}/full.pth",)),
        Case("--to-torch onto a full disk", [*tt, "{model18}", "--out", "{work}/full/r.pth"],
             "error", CONVERT, "10", setup=S.full_disk(), status=1),
        Case("--to-torch --overwrite a state dict on a full disk", [*tt, "{model18}", "--out",
             "{work}/full/prev.pth", "--overwrite"], "error", CONVERT, "10",
             setup=S.full_disk(then=S.copy_into("r18_pth", "prev.pth")),
             protect=("{work}/full/prev.pth",), status=1),
        Case("--to-torch --out an existing file", [*tt, "{model18}", "--out", "{work}/r.pth"],
             "error", CONVERT, "", setup=S.a_file("r.pth"), protect=("{work}/r.pth",)),
        Case("--to-torch --out a directory", [*tt, "{model18}", "--out", "{work}/d.pth"],
             "error", CONVERT, "11", setup=lambda ctx: (ctx.work / "d.pth").mkdir()),
        Case("--to-torch --out in a read-only dir", [*tt, "{model18}", "--out",
             "{readonly}/r.pth"], "error", CONVERT, "11", no_dac=True, status=1),
        Case("--to-torch a missing dir", [*tt, "{work}/none", "--out", "{work}/r.pth"], "error",
             CONVERT, ""),
        Case("--to-torch a .pth file", [*tt, "{r18_pth}", "--out", "{work}/r.pth"], "error",
             CONVERT, ""),
        Case("--to-torch --arch that differs", [*tt, "{model18}", "--arch", "resnet50", "--out",
             "{work}/r.pth"], "error", CONVERT, ""),
        Case("--to-torch a trained run", [*tt, "{run}", "--out", "{work}/r.pth"], "any", CONVERT,
             "", check=checks.file_written("{work}/r.pth")),
    ]


SUMMARY_BAD = [
    ("unknown arch", ["resnet19"], ""), ("path as arch", ["../../etc/passwd"], ""),
    ("--input-size 0", ["resnet18", "--input-size", "0"], "4"),
    ("--input-size -5", ["resnet18", "--input-size", "-5"], "4"),
    ("--num-classes -1", ["resnet18", "--num-classes", "-1"], "4"),
    ("--num-classes 0", ["resnet18", "--num-classes", "0"], "4"),
    ("--in-channels 0", ["resnet18", "--in-channels", "0"], ""),
    ("--input-size abc", ["resnet18", "--input-size", "abc"], ""),
    ("--stem huge", ["resnet18", "--stem", "huge"], ""), ("no arch", [], ""),
]


def summary_cases() -> list[Case]:
    s = ["resnet-jax", "summary"]
    cases = [Case(f"summary {name}", [*s, *args], "error", SUMMARY, item)
             for name, args, item in SUMMARY_BAD]
    cases += [
        Case("summary --input-size 1", [*s, "resnet18", "--input-size", "1"], "any", SUMMARY, ""),
        Case("summary digit_cnn --input-size 3", [*s, "digit_cnn", "--input-size", "3"], "any",
             SUMMARY, ""),
        Case("summary resnet50 --input-size 160", [*s, "resnet50", "--input-size", "160"], "ok",
             SUMMARY, "", check=checks.mentions("layer4")),
    ]
    return cases


def cases() -> list[Case]:
    return source_cases() + out_cases() + to_torch_cases() + summary_cases()
