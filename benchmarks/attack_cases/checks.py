"""Checks of a successful run's result: each returns why the result is wrong, or None.

Each check is a factory: ``same_predictions("gray16")`` returns ``check(ctx)``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np


def predict_blocks(out: str) -> list[list[str]]:
    """``predict``'s output: one list of ranked lines per image, in order."""
    blocks: list[list[str]] = []
    for line in out.splitlines():
        if not line.strip():
            continue
        if line[0].isspace() and blocks:
            blocks[-1].append(line.strip())
        elif not line[0].isspace():
            blocks.append([])
    return blocks


def same_predictions(kind: str):
    """predict ran on [ref, image, white]: the image must rank exactly as its reference."""
    def check(ctx):
        blocks = predict_blocks(ctx.result.out)
        if len(blocks) != 3 or not all(blocks):
            return f"expected 3 ranked blocks, got {len(blocks)}"
        ref, got, white = blocks
        if got != ref:
            return f"{kind} ranks {got[0]!r}, its reference {ref[0]!r}: decoded differently"
        if ref == white:
            ctx.notes.append("reference and white image rank alike: check not discriminative")
        else:
            ctx.notes.append(f"{kind} decodes as its reference: {got[0]}")
        return None
    return check


def ranked(n: int):
    """predict printed ``n`` ranked lines per image and nothing unreadable."""
    def check(ctx):
        blocks = predict_blocks(ctx.result.out)
        if not blocks or any(len(b) != n for b in blocks):
            return f"expected {n} ranked lines per image, got {[len(b) for b in blocks]}"
        return None
    return check


def _maps(out_dir: Path, stem: str) -> np.ndarray | None:
    found = sorted(p for p in out_dir.rglob("*.npy") if p.name.startswith(stem + "_"))
    return np.load(found[0]) if found else None


def same_maps(kind: str):
    """gradcam --save-maps ran on the reference and the image: the maps must agree."""
    def check(ctx):
        out = ctx.work / "maps"
        ref_stem = Path(ctx.fx[f"{kind}_ref"]).stem
        ref, got = _maps(out, ref_stem), _maps(out, Path(ctx.fx[kind]).stem)
        if ref is None or got is None:
            return f"no saved maps for {kind} and its reference in {out}"
        if ref.shape != got.shape or not np.allclose(ref, got, atol=1e-4):
            diff = np.abs(ref - got).max() if ref.shape == got.shape else "shape"
            return f"{kind}'s map differs from its reference's (max diff {diff}): decoded differently"
        ctx.notes.append(f"{kind}'s Grad-CAM map equals its reference's")
        return None
    return check


def pngs_in(template: str, n: int):
    """Exactly ``n`` PNG files under the output directory, and stdout names each."""
    def check(ctx):
        out = ctx.path(template)
        files = sorted(out.rglob("*.png")) if out.is_dir() else []
        if len(files) != n:
            return f"{len(files)} PNG(s) in {out}, expected {n} (one written over another?)"
        unnamed = [f.name for f in files if f.name not in ctx.result.out]
        if unnamed:
            return f"output does not list {unnamed}"
        return None
    return check


def file_written(template: str, min_bytes: int = 100):
    def check(ctx):
        p = ctx.path(template)
        if not p.is_file() or p.stat().st_size < min_bytes:
            return f"{p} was not written"
        return None
    return check


def same_state_dict(out_tpl: str, ref_key: str = "r18_pth"):
    """The written torch file holds exactly the reference's tensors."""
    def check(ctx):
        import torch

        out = ctx.path(out_tpl)
        if out.suffix == ".safetensors":
            from safetensors.torch import load_file
            got = load_file(str(out))
        else:
            got = torch.load(out, weights_only=True)
        ref = torch.load(ctx.fx[ref_key], weights_only=True)
        if set(got) != set(ref):
            return f"keys differ: {sorted(set(got) ^ set(ref))[:4]}"
        bad = [k for k in ref if not torch.equal(got[k].to(ref[k].dtype), ref[k])]
        return f"tensors differ: {bad[:4]}" if bad else None
    return check


def model_dir(template: str, num_classes: int | None = None):
    """A readable model directory (config and variables), with this many classes."""
    def check(ctx):
        p = ctx.path(template)
        cfg = p / "config" / "metadata"
        if not (cfg.is_file() and (p / "variables").is_dir()):
            return f"{p} is not a model directory"
        if num_classes is not None and json.loads(cfg.read_text()).get("num_classes") != num_classes:
            return f"{p} does not have {num_classes} classes"
        return None
    return check


def nan_model_scores_zero(ctx):
    text = ctx.result.out + ctx.result.err
    acc = re.search(r"accuracy\s+([\d.]+)%", text)
    if not acc:
        return "no accuracy printed"
    if float(acc.group(1)) > 0.0:
        return f"NaN model scored accuracy {acc.group(1)}%"
    if "finite" not in text.lower() and "nan" not in text.lower():
        return "no warning about non-finite outputs"
    return None


def reported_file_exists(ctx):
    m = re.search(r"confusion matrix: (.+)", ctx.result.out)
    if not m:
        return "no confusion-matrix path reported"
    p = Path(m.group(1).strip())
    p = p if p.is_absolute() else ctx.work / p
    return None if p.is_file() else f"reported {p}, which is not a file"


def mentions(*words: str, where: str = "err"):
    """Exit 0 is right only if the output says these words (e.g. a fallback)."""
    def check(ctx):
        text = (ctx.result.err + ctx.result.out).lower()
        missing = [w for w in words if w.lower() not in text]
        return f"output does not mention {missing}" if missing else None
    return check


def named_once(word: str):
    """Exactly one stderr line names ``word`` (a warning given once, not once per split)."""
    def check(ctx):
        n = sum(word in line for line in ctx.result.err.splitlines())
        return None if n == 1 else f"{n} stderr lines name {word}, expected one"
    return check


def exists_or_refused(template: str):
    """For "any" cases whose success writes a file: it must be there."""
    return file_written(template, 1)


FALLBACK_WORDS = ("fall", "intact", "instead", "older", "previous", "skipp", "damaged", "corrupt")


def fell_back(ctx):
    """A run that fell back from a damaged latest step must say so."""
    text = (ctx.result.err + ctx.result.out).lower()
    if not any(w in text for w in FALLBACK_WORDS):
        return "exit 0 without saying that the latest step was damaged and skipped"
    return None
