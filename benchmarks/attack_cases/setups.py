"""Per-case preparation: copies of fixtures in the case's scratch dir, then damage."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def copy(key: str, name: str | None = None):
    """Copy fixture ``key`` into the scratch dir (as ``name``) so the case may change it."""
    def setup(ctx):
        src = Path(ctx.fx[key])
        dst = ctx.work / (name or src.name)
        if src.is_dir():
            shutil.copytree(src, dst, symlinks=True)
        else:
            shutil.copy(src, dst)
    return setup


def chain(*steps):
    def setup(ctx):
        for step in steps:
            step(ctx)
    return setup


def unrelated(name: str = "important"):
    """A folder of someone's unrelated files."""
    def setup(ctx):
        d = ctx.work / name
        (d / "notes").mkdir(parents=True)
        (d / "thesis.tex").write_text("\\section{Results}\n")
        (d / "notes" / "todo.txt").write_text("backup everything\n")
    return setup


def a_file(name: str = "file.txt", text: str = "precious\n"):
    def setup(ctx):
        (ctx.work / name).write_text(text)
    return setup


def symlink(name: str, target: str):
    """``name`` in the scratch dir pointing at ``target`` (e.g. /dev/full)."""
    def setup(ctx):
        (ctx.work / name).symlink_to(target)
    return setup


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _config_file(step: Path) -> Path:
    return step / "config" / "metadata"


def _edit_config(step: Path, **changes) -> None:
    cfg = json.loads(_config_file(step).read_text())
    cfg.update(changes)
    _config_file(step).write_text(json.dumps(cfg))


def _truncate(folder: Path) -> None:
    for p in _files(folder):
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])


def _bitflip(folder: Path) -> None:
    biggest = max(_files(folder), key=lambda p: p.stat().st_size)
    data = bytearray(biggest.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 8):
        data[i] ^= 0x10
    biggest.write_bytes(bytes(data))


DAMAGES = {
    "invalid JSON config": lambda s: _config_file(s).write_text('{"module": "ResNet", '),
    "deleted variables item": lambda s: shutil.rmtree(s / "variables"),
    "deleted config item": lambda s: shutil.rmtree(s / "config"),
    "edited widths": lambda s: _edit_config(s, stage_widths=[32, 64, 128, 256]),
    "truncated variables": lambda s: _truncate(s / "variables"),
    "bit-flipped variables": lambda s: _bitflip(s / "variables"),
    "emptied variables files": lambda s: [p.write_bytes(b"") for p in _files(s / "variables")],
    "unknown arch in config": lambda s: _edit_config(s, arch="resnet9000", module="NoSuchNet"),
}


def damaged_run(damage: str, steps=(2,)):
    """A copy of the tiny run at ``{work}/run`` with ``damage`` done to the given steps."""
    def setup(ctx):
        copy("run")(ctx)
        for step in steps:
            DAMAGES[damage](ctx.work / "run" / str(step))
    return setup


def full_disk(name: str = "full", size_mb: int = 96, free: int = 64_000, then=None):
    """A real full file system at ``{work}/<name>``: a tmpfs (needs root), filled until
    ``free`` bytes are left, after ``then(ctx, mount)`` put earlier data there."""
    import os
    import subprocess

    def setup(ctx):
        mount = ctx.work / name
        mount.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs",
                               str(mount)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"cannot mount a tmpfs for the full disk: {proc.stderr.strip()}")
        ctx.cleanups.append(lambda: subprocess.run(["umount", "-l", str(mount)]))
        if then:
            then(ctx, mount)
        st = os.statvfs(mount)
        filler = st.f_bavail * st.f_frsize - free
        with open(mount / ".filler", "wb") as f:
            for _ in range(filler // (1 << 20)):
                f.write(bytes(1 << 20))
            f.write(bytes(filler % (1 << 20)))
    return setup


def copy_into(key: str, name: str):
    """For ``full_disk(then=...)``: a copy of fixture ``key`` on the small file system."""
    def then(ctx, mount):
        src = Path(ctx.fx[key])
        (shutil.copytree if src.is_dir() else shutil.copy)(src, mount / name)
    return then


def dev_full(name: str = "devfull"):
    """A private ``/dev/full`` at ``{work}/<name>``: a clone of the device node (root), or a
    symlink to it. Code that renames a file over its output would otherwise replace the
    machine's own /dev/full."""
    import os
    import stat

    def setup(ctx):
        path = ctx.work / name
        try:
            os.mknod(path, 0o666 | stat.S_IFCHR, os.stat("/dev/full").st_rdev)
        except PermissionError:
            path.symlink_to("/dev/full")
    return setup
