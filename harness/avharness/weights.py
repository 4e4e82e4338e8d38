"""Starting a model from weights saved elsewhere: safe loading, key remapping, provenance.

Checkpoints from other code (the seeds' training scripts, a lab's own) differ in three ways this
module absorbs: they are wrapped (``{"state_dict": ...}``, ``{"model": ...}``), they carry
DataParallel's ``module.`` prefix, and their layer names differ from ours. ``key_map`` renames key
prefixes (old -> new, applied in order, first match wins; ``null`` drops the keys). Loading uses
``torch.load(weights_only=True)``: a checkpoint is data, and unpickling arbitrary objects from a
file someone sent you runs their code.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from .errors import UserError

_CONTAINERS = ("state_dict", "model_state_dict", "model", "net", "weights")


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checkpoint_path(w, mspec) -> Path:
    """A suite model entry's checkpoint file (relative paths from the working directory); must exist."""
    path = Path(mspec.load["checkpoint"]).expanduser()
    if not path.is_file():
        idx = mspec.where[mspec.where.index("[") + 1:-1]
        raise w.error(f"{mspec.where}.checkpoint", mspec.lines.get("checkpoint", mspec.lines[""]),
                      f"checkpoint file {str(path)!r} does not exist; give the path of a saved state dict "
                      f"(--set models.{idx}.checkpoint=/path/to/weights.pt)")
    return path


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, unwrapped from common containers; UserError when unusable."""
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint {path}: file not found") from None
    except Exception as exc:  # pickle.UnpicklingError for objects, RuntimeError for damaged zips
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"checkpoint {path}: not a loadable state dict ({first[:200]}); avharness loads weights only "
                        "(torch.load weights_only=True), so save model.state_dict(), not the model object") from None
    for key in _CONTAINERS:  # unwrap {"state_dict": {...}, "epoch": 3, ...}
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"checkpoint {path}: expected a mapping of parameter names to tensors (a state dict), "
                        f"got {type(obj).__name__}")
    if all(k.startswith("module.") for k in obj):  # saved from nn.DataParallel / DDP
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def remap_keys(state: dict[str, torch.Tensor], key_map: dict[str, str | None] | None) -> dict[str, torch.Tensor]:
    """Rename key prefixes: the first matching ``old`` prefix becomes ``new``; ``None`` drops the key."""
    if not key_map:
        return dict(state)
    out = {}
    for key, value in state.items():
        for old, new in key_map.items():
            if key.startswith(old):
                if new is not None:
                    out[new + key[len(old):]] = value
                break
        else:
            out[key] = value
    return out


def load_weights(model: nn.Module, path: str | Path, key_map: dict[str, str | None] | None = None,
                 strict: bool = True) -> dict:
    """Load a checkpoint into ``model``; return what the report records about it.

    With ``strict``, every model parameter must be filled and every checkpoint key used, with the
    right shapes: a half-loaded model gives confidently wrong robustness numbers. The error lists
    the first mismatches so the user can write a ``key_map``.
    """
    path = Path(path)
    state = remap_keys(read_state_dict(path), key_map)
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    shapes = sorted(f"{k} {list(state[k].shape)} vs {list(own[k].shape)}" for k in own
                    if k in state and state[k].shape != own[k].shape)
    if shapes or (strict and (missing or unexpected)):
        parts = []
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape (checkpoint vs model)", shapes)):
            if keys:
                parts.append(f"{len(keys)} {what}: {', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''}")
        raise UserError(f"checkpoint {path} does not fit model {type(model).__name__}: {'; '.join(parts)}. "
                        "Rename keys with the model entry's key_map ({old prefix: new prefix}, null drops a prefix); "
                        "`avharness model init SUITE -o DIR` writes this model's own keys for comparison")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return {"path": str(path.resolve()), "sha256": file_sha256(path), "key_map": dict(key_map or {}),
            "missing": missing, "unexpected": unexpected}
