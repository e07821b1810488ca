"""The data subcommands: ``check-data`` (read every image once) and ``pack`` (write a folder
as ArrayRecord shards that ``--dataset`` reads like the folder)."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import ResNetJaxError


def register(sub) -> None:
    p = sub.add_parser("check-data", help="read every image of a folder once and list the unreadable ones",
                       description="Decode every image under PATH (an image folder as train lists it) "
                                   "with a progress bar. Training does not need this: it skips and "
                                   "counts an unreadable image when it meets one (--strict stops).")
    p.add_argument("path", type=Path)
    _common(p, workers="threads that decode (default 4)")
    p.set_defaults(func=run_check_data)

    p = sub.add_parser("pack", help="write an image folder as a few large ArrayRecord shard files",
                       description="Write FOLDER's images (re-encoded when larger than --max-side), "
                                   "labels and class names as shards in OUT; train with --dataset OUT.")
    p.add_argument("folder", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--max-side", type=int, default=256,
                   help="images with a longer side above this are shrunk to it (default 256)")
    p.add_argument("--overwrite", action="store_true", help="replace a pack already in OUT")
    _common(p, workers="threads that read and re-encode (default 4)")
    p.set_defaults(func=run_pack)


def _common(p, workers: str) -> None:
    p.add_argument("--channels", type=int, choices=(1, 3), default=3, help="3 (RGB, default) or 1")
    # --threads, as train's flag for threads is named (train's --workers counts processes);
    # --workers is its former name, still accepted.
    p.add_argument("--threads", "--workers", dest="workers", type=int, default=4, metavar="N", help=workers)
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def _workers(args) -> int:
    if args.workers < 1:
        raise ResNetJaxError(f"--threads must be an integer >= 1; got {args.workers}")
    return args.workers


def run_check_data(args) -> int:
    from . import check_data

    report = check_data(args.path, args.channels, _workers(args), args.progress)
    head = report.summary() if report.ok else f"{len(report.unreadable)} of {report.checked} images cannot be read:"
    print(f"{args.path}: {head}")
    for _, reason in report.unreadable:
        print(reason)
    return 0 if report.ok else 1


def run_pack(args) -> int:
    from . import pack

    meta = pack(args.folder, args.out, max_side=args.max_side, overwrite=args.overwrite,
                channels=args.channels, workers=_workers(args), progress=args.progress)
    count = sum(sum(s["counts"]) for s in meta["sets"].values())
    print(f"packed {count} images of {len(meta['class_names'])} classes into {args.out} "
          f"(sets: {', '.join(meta['sets'])}); train with --dataset {args.out}")
    if meta["unreadable"]:
        print(f"warning: {meta['unreadable']} image(s) could not be read; they are stored as they are "
              "and training skips them (resnet-jax check-data lists them)", file=sys.stderr)
    return 0
