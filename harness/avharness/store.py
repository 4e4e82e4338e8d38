"""The run store: trained checkpoints and finished cells, keyed by hashes, written atomically.

Every file is written to a temporary name in the same folder and renamed into place, so a crash
or Ctrl-C leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

from .errors import UserError


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def json_safe(obj):
    """NaN and inf become null: strict JSON has no NaN, and consumers in other languages choke on it."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n")


class Store:
    """``root/models/<key>/`` holds a checkpoint; ``root/cells/<key>.json`` a finished cell."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def model_dir(self, key: str) -> Path:
        return self.root / "models" / key

    def has_model(self, key: str) -> bool:
        d = self.model_dir(key)
        return (d / "model.pt").exists() and (d / "model.json").exists() and (d / "fit.json").exists()

    def cell_path(self, key: str) -> Path:
        return self.root / "cells" / f"{key}.json"

    def has_cell(self, key: str) -> bool:
        return self.cell_path(key).exists()

    def load_cell(self, key: str) -> dict | None:
        path = self.cell_path(key)
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None  # unreadable: recompute it (and overwrite) rather than fail the run

    def save_cell(self, key: str, cell: dict) -> None:
        atomic_write_json(self.cell_path(key), cell)


def ensure_writable(folder: str | Path) -> Path:
    """Create ``folder`` and prove it is writable, or stop with a clear message."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserError(f"{folder}: output folder is not writable ({reason}); choose another with -o DIR") from None
    return folder
