"""Metric logs: one JSON object per line, and a TensorBoard event file of the scalars."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from .tfevents import ScalarWriter

METRICS_FILE = "metrics.jsonl"


class MetricLog:
    """Appends records to ``run_dir/metrics.jsonl`` (and a TensorBoard event file)."""

    def __init__(self, run_dir, enabled: bool = True, tensorboard: bool = True,
                 start_step: int | None = None):
        """``start_step``: a resumed run's step; what a crashed attempt logged after it is
        dropped (``trim_metrics`` for the JSON lines, a restart event for TensorBoard)."""
        self.enabled = enabled
        self.path = Path(run_dir) / METRICS_FILE
        self._file = None
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", buffering=1)
        if tensorboard:
            self._tb = ScalarWriter(Path(run_dir) / "tensorboard")
            if start_step:
                self._tb.restart_at(start_step + 1)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                 for k, v in record.items()}
        try:
            self._file.write(json.dumps(clean) + "\n")
        except OSError as e:  # disk full: name the file
            raise OSError(e.errno, e.strerror, str(self.path)) from e
        if self._tb is not None:
            kind = record.get("kind", "train")
            for k, v in record.items():
                if k not in ("step", "kind", "epoch") and isinstance(v, (int, float)) and v is not None:
                    self._tb.add_scalar(f"{kind}/{k}", v, record.get("step", 0))
            self._tb.flush()

    def close(self) -> None:
        if self._file:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_metrics(path) -> list[dict]:
    """The records of a metrics file; a line cut short by a crash is ignored."""
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def trim_metrics(path, step: int) -> None:
    """Drop the records logged after ``step`` (a run resumed there logs them again) and any
    line cut short by a crash; the file is replaced whole."""
    path = Path(path)
    if not path.exists():
        return
    kept = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(record, dict) or int(record.get("step") or 0) <= step:
                kept.append(line if line.endswith("\n") else line + "\n")
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text("".join(kept))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
