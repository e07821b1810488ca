"""``predict``, ``gradcam`` and ``visualize``: unusual and broken images, arguments out of
range, outputs that cannot be written."""

from __future__ import annotations

from . import checks
from . import setups as S
from .core import Case

PREDICT = "H3 resnet_jax/commands.py (run_predict), data/images.py"
IMAGES = "H3 resnet_jax/data/images.py, imagenet.py"
GRADCAM = "H3 resnet_jax/explain/cli.py (run_gradcam), viz/overlays.py"
VISUALIZE = "H3 resnet_jax/explain/cli.py (run_visualize), viz/overlays.py"
PR = ["resnet-jax", "predict", "--weights", "{model18}"]
GC = ["resnet-jax", "gradcam", "--weights"]
VZ = ["resnet-jax", "visualize", "--weights", "{run}", "--steps", "2"]

DECODED = ("rgb_jpg", "gray16", "float_tif", "cmyk", "palette", "rgba", "gray8")
VALID = ("one", "gif", "narrow")
BROKEN = ("trunc", "empty_img", "text_img", "garbage_img", "bomb", "dir_img", "missing_img")


def predict_cases() -> list[Case]:
    cases = [Case(f"predict {k} decodes like the loader", [*PR, f"{{{k}_ref}}", f"{{{k}}}",
                  "{white}"], "ok", IMAGES, "3", check=checks.same_predictions(k))
             for k in DECODED]
    cases += [Case(f"predict {k}", [*PR, f"{{{k}}}"], "ok", IMAGES, "", check=checks.ranked(5))
              for k in VALID]
    cases += [Case(f"predict {k}", [*PR, f"{{{k}}}"], "error", IMAGES, "3" if k == "bomb" else "")
              for k in BROKEN]
    cases += [
        Case("predict a good and a broken image", [*PR, "{rgb_jpg}", "{trunc}"], "error", IMAGES,
             "", mentions=("trunc.jpg",)),
        Case("predict --top 0", [*PR, "{rgb_jpg}", "--top", "0"], "error", PREDICT, ""),
        Case("predict --top -1", [*PR, "{rgb_jpg}", "--top", "-1"], "error", PREDICT, ""),
        Case("predict --top 2000", [*PR, "{rgb_jpg}", "--top", "2000"], "any", PREDICT, "",
             check=checks.ranked(1000)),
        Case("predict --weights missing", ["resnet-jax", "predict", "--weights", "{work}/none",
             "{rgb_jpg}"], "error", PREDICT, ""),
        Case("predict --weights an image", ["resnet-jax", "predict", "--weights", "{rgb_jpg}",
             "{rgb_jpg}"], "error", PREDICT, ""),
        Case("predict --weights a .pth", ["resnet-jax", "predict", "--weights", "{r18_pth}",
             "{rgb_jpg}"], "error", PREDICT, "suite"),
        Case("predict --weights an empty dir", ["resnet-jax", "predict", "--weights", "{work}",
             "{rgb_jpg}"], "error", PREDICT, ""),
        Case("predict --weights evil .pth", ["resnet-jax", "predict", "--weights", "{evil_pth}",
             "{rgb_jpg}"], "error", PREDICT, "1"),
        Case("predict no images", [*PR], "error", PREDICT, ""),
        Case("predict a trained 3-class run", ["resnet-jax", "predict", "--weights", "{run}",
             "{rgb_jpg}"], "ok", PREDICT, "", check=checks.ranked(3)),
    ]
    return cases


def gradcam_image_cases() -> list[Case]:
    out = ["--out", "{work}/maps", "--save-maps", "--target", "1"]
    cases = []
    for k in ("gray16", "float_tif", "cmyk", "palette"):
        cases.append(Case(f"gradcam {k} decodes like the loader (imagenet model)",
                          [*GC, "{model18}", f"{{{k}_ref}}", f"{{{k}}}", *out], "ok", IMAGES, "3",
                          check=checks.same_maps(k)))
    for k in ("gray16", "float_tif"):
        cases.append(Case(f"gradcam {k} decodes like the loader (small model)",
                          [*GC, "{run}", f"{{{k}_ref}}", f"{{{k}}}", *out], "ok", IMAGES, "3",
                          check=checks.same_maps(k)))
    cases += [Case(f"gradcam {k}", [*GC, "{model18}", f"{{{k}}}", "--out", "{work}/maps"],
                   "error", IMAGES, "3" if k == "bomb" else "")
              for k in ("trunc", "empty_img", "text_img", "bomb", "dir_img", "missing_img")]
    cases.append(Case("gradcam two inputs named x.png", [*GC, "{run}", "{same_a}", "{same_b}",
                      "--out", "{work}/maps"], "ok", GRADCAM, "9",
                      check=checks.pngs_in("{work}/maps", 2)))
    return cases


GRADCAM_BAD = [  # name, extra arguments, item
    ("--alpha -0.1", ["--alpha", "-0.1"], "4"), ("--alpha 1.5", ["--alpha", "1.5"], "4"),
    ("--alpha nan", ["--alpha", "nan"], "4"), ("--colormap nosuch", ["--colormap", "nosuch"], "4"),
    ("--target -1", ["--target", "-1"], "4"), ("--target 3 of 3", ["--target", "3"], "4"),
    ("--target 99999", ["--target", "99999"], "4"), ("--layer nosuch", ["--layer", "nosuch"], ""),
    ("--method nosuch", ["--method", "nosuch"], ""),
]


def gradcam_arg_cases() -> list[Case]:
    g = [*GC, "{run}", "{rgb_jpg}"]
    cases = [Case(f"gradcam {name}", [*g, "--out", "{work}/maps", *extra], "error", GRADCAM, item)
             for name, extra, item in GRADCAM_BAD]
    cases += [
        Case("gradcam --target 1000 on imagenet", [*GC, "{model18}", "{rgb_jpg}", "--target",
             "1000", "--out", "{work}/maps"], "error", GRADCAM, "4"),
        Case("gradcam --layer fc", [*g, "--layer", "fc", "--out", "{work}/maps"], "any", GRADCAM,
             ""),
        Case("gradcam --out /dev/full", [*g, "--out", "{work}/devfull"], "error", GRADCAM, "11",
             setup=S.dev_full(), protect=("{work}/devfull",), status=1),
        Case("gradcam --out is a file", [*g, "--out", "{work}/file.txt"], "error", GRADCAM, "11",
             setup=S.a_file(), protect=("{work}/file.txt",), status=1),
        Case("gradcam --out in a read-only dir", [*g, "--out", "{readonly}/maps"], "error",
             GRADCAM, "11", no_dac=True, status=1),
        Case("gradcam --out with missing parents", [*g, "--out", "{work}/a/b/maps"], "any",
             GRADCAM, "11", check=checks.pngs_in("{work}/a/b/maps", 1)),
        Case("gradcam --out onto a full disk", [*g, "--out", "{work}/full/maps"], "error",
             GRADCAM, "10", setup=S.full_disk(free=0), status=1),
        Case("gradcam --save-maps: the .npy does not fit", [*GC, "{model18}", "{rgb_jpg}",
             "--out", "{work}/maps", "--save-maps"], "error", GRADCAM, "10", status=1,
             fsize=192_000, env={"RESNET_JAX_CACHE": "off"}, mentions=(".npy",)),
        Case("gradcam --weights missing", [*GC, "{work}/none", "{rgb_jpg}", "--out",
             "{work}/maps"], "error", GRADCAM, ""),
    ]
    return cases


VISUALIZE_BAD = [  # name, extra arguments, item
    ("--steps 0", ["--class", "0", "--steps", "0"], "4"),
    ("--steps -1", ["--class", "0", "--steps", "-1"], "4"),
    ("--size 0", ["--class", "0", "--size", "0"], "4"),
    ("--size -8", ["--class", "0", "--size", "-8"], "4"),
    ("--lr nan", ["--class", "0", "--lr", "nan"], "4"),
    ("--lr inf", ["--class", "0", "--lr", "inf"], "4"),
    ("--units without --layer", ["--units", "0-3"], ""),
    ("--layer nosuch", ["--units", "0", "--layer", "nosuch"], ""),
    ("--units 9999 of layer1", ["--units", "9999", "--layer", "layer1"], ""),
    ("--units -1", ["--units", "-1", "--layer", "layer1"], ""),
    ("--units a-b", ["--units", "a-b", "--layer", "layer1"], ""),
    ("--units 5-2", ["--units", "5-2", "--layer", "layer1"], ""),
    ("--units ''", ["--units", "", "--layer", "layer1"], ""),
    ("--class 3 of 3", ["--class", "3"], ""), ("--class -1", ["--class", "-1"], ""),
    ("--class and --units", ["--class", "0", "--units", "0", "--layer", "layer1"], ""),
    ("--chunk -1", ["--class", "0", "--chunk", "-1"], ""),
    ("--l1 nan", ["--class", "0", "--l1", "nan"], ""),
    ("--l2 -1", ["--class", "0", "--l2", "-1"], ""), ("--tv nan", ["--class", "0", "--tv", "nan"], ""),
    ("--lr 0", ["--class", "0", "--lr", "0"], "4"), ("--lr -1", ["--class", "0", "--lr", "-1"], "4"),
    ("--param nosuch", ["--class", "0", "--param", "nosuch"], ""),
]


def visualize_cases() -> list[Case]:
    out = ["--out", "{work}/g.png"]
    cases = [Case(f"visualize {name}", [*VZ, *extra, *out], "error", VISUALIZE, item)
             for name, extra, item in VISUALIZE_BAD]
    cls = [*VZ, "--class", "0-2"]
    cases += [
        Case("visualize --class 0-2", [*cls, *out], "ok", VISUALIZE, "",
             check=checks.file_written("{work}/g.png")),
        Case("visualize --units 0-3 --layer layer1", [*VZ, "--units", "0-3", "--layer", "layer1",
             *out], "ok", VISUALIZE, "", check=checks.file_written("{work}/g.png")),
        Case("visualize --out /dev/full", [*cls, "--out", "{work}/full.png"], "error",
             VISUALIZE, "11", setup=S.dev_full("full.png"), protect=("{work}/full.png",),
             status=1),
        Case("visualize --out a directory", [*cls, "--out", "{work}"], "error", VISUALIZE, "11",
             status=1),
        Case("visualize --out in a read-only dir", [*cls, "--out", "{readonly}/g.png"], "error",
             VISUALIZE, "11", no_dac=True, status=1),
        Case("visualize --out with missing parents", [*cls, "--out", "{work}/a/b/g.png"], "any",
             VISUALIZE, "11", check=checks.file_written("{work}/a/b/g.png")),
        Case("visualize --out under a file", [*cls, "--out", "{work}/file.txt/g.png"], "error",
             VISUALIZE, "11", setup=S.a_file(), protect=("{work}/file.txt",), status=1),
        Case("visualize --out onto a full disk", [*cls, "--out", "{work}/full/g.png"], "error",
             VISUALIZE, "10", setup=S.full_disk(free=0), status=1),
    ]
    return cases


def cases() -> list[Case]:
    return predict_cases() + gradcam_image_cases() + gradcam_arg_cases() + visualize_cases()
