"""Starting a model from weights saved elsewhere: safe loading, key remapping, provenance.

Checkpoints from other code (the seeds' training scripts, a lab's own) differ in three ways this
module absorbs: they are wrapped (``{"state_dict": ...}``, ``{"model": ...}``), they carry
DataParallel's ``module.`` prefix, and their layer names differ from ours. ``key_map`` renames key
prefixes (old -> new, applied in order, each to the key the previous rules produced; ``null``
drops the keys). Loading uses
``torch.load(weights_only=True)``: a checkpoint is data, and unpickling arbitrary objects from a
file someone sent you runs their code.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from .errors import UserError

if TYPE_CHECKING:
    from .suite import PluginSpec, _Where


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checkpoint_path(w: _Where, mspec: PluginSpec) -> Path:
    """A suite model entry's checkpoint file (relative paths from the working directory); must exist."""
    path = Path(mspec.load["checkpoint"]).expanduser()
    if not path.is_file():
        idx = mspec.where[mspec.where.index("[") + 1:-1]
        raise w.error(f"{mspec.where}.checkpoint", mspec.lines.get("checkpoint", mspec.lines[""]),
                      f"checkpoint file {str(path)!r} does not exist; give the path of a saved state dict "
                      f"(--set models.{idx}.checkpoint=/path/to/weights.pt)")
    return path


#: container keys a training script commonly wraps its state dict in
CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "net", "network")
#: how many keys an error message lists per category
SHOW = 5


#: how torch's weights-only unpickler names a global it refused, across torch versions
_REFUSED = (r"unsupported GLOBAL (\S+)", r"Unsupported global: GLOBAL (\S+)")


def _code_globals(message: str, data: bytes) -> str | None:
    """The callable a pickle would import and run, if torch's refusal (or the raw pickle) shows one."""
    for pattern in _REFUSED:
        found = re.search(pattern, message, flags=re.IGNORECASE)
        if found:
            return found.group(1)
    if data[:2] == b"PK":  # a torch zip whose refusal named no global: nothing more to tell
        return None
    import pickletools  # a raw pickle (not torch's zip format): find what it would import, without running it

    names, strings = [], []
    try:
        for op, arg, _ in pickletools.genops(io.BytesIO(data[: 1 << 20])):
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                strings.append(arg)
            elif op.name in ("GLOBAL", "INST"):
                names.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:  # not a pickle at all, or cut short
        pass
    return ", ".join(dict.fromkeys(names)) or None


def _unwrap(obj, path: Path) -> dict:
    """The state dict inside a checkpoint container."""
    seen = []
    while isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((k for k in CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)][:SHOW]
            raise UserError(
                f"{path}: not a state dict of tensors: entries {bad} are not tensors and none of "
                f"{list(CONTAINER_KEYS)} holds one{' (unwrapped ' + ' -> '.join(seen) + ')' if seen else ''}; "
                "re-save the weights with torch.save(model.state_dict(), path)"
            )
        seen.append(repr(inner))
        obj = obj[inner]
    if not isinstance(obj, Mapping):
        raise UserError(f"{path}: holds a {type(obj).__name__}, not a state dict; "
                        "re-save the weights with torch.save(model.state_dict(), path)")
    if not obj:
        raise UserError(f"{path}: the state dict is empty")
    return dict(obj)


def check_key_map(key_map: object) -> list[tuple[str, str | None]]:
    if key_map is None:
        return []
    if not isinstance(key_map, Mapping):
        raise UserError(f"key_map must be a mapping {{old_prefix: new_prefix or null}}, got {type(key_map).__name__}")
    rules = []
    for old, new in key_map.items():
        if not isinstance(old, str) or not (new is None or isinstance(new, str)):
            raise UserError(f"key_map entries must map a key prefix (string) to a prefix (string) or null, "
                            f"got {old!r}: {new!r}")
        rules.append((old, new))
    return rules


def _strip_data_parallel(state: dict, model_keys: set[str]) -> dict:
    prefix = "module."
    while state and all(k.startswith(prefix) for k in state) and not all(k.startswith(prefix) for k in model_keys):
        state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _apply_key_map(state: dict, rules, path: Path) -> tuple[dict, list[str]]:
    out, dropped, origin = {}, [], {}
    for key, value in state.items():
        new = key
        for old, repl in rules:
            if new.startswith(old):
                if repl is None:
                    new = None
                    break
                new = repl + new[len(old):]
        if new is None:
            dropped.append(key)
            continue
        if new in out:
            raise UserError(f"{path}: key_map maps both {origin[new]!r} and {key!r} to {new!r}; make the prefixes distinct")
        out[new], origin[new] = value, key
    return out, dropped


def _listing(keys: list[str]) -> str:
    more = f" and {len(keys) - SHOW} more" if len(keys) > SHOW else ""
    return ", ".join(keys[:SHOW]) + more


def load_weights(model: nn.Module, path: str | Path, key_map: dict[str, str] | None = None, strict: bool = True) -> dict:
    """Load a state dict saved by other code into ``model`` (see the module docstring)."""
    path = Path(path)
    rules = check_key_map(key_map)
    obj, sha256 = _read_checkpoint(path)
    target = model.state_dict()
    state = _unwrap(obj, path)
    state = _strip_data_parallel(state, set(target))
    state, dropped = _apply_key_map(state, rules, path)
    missing, unexpected = _check_fit(model, target, state, strict, path)
    model.load_state_dict(state, strict=False)
    return {
        "path": str(path),
        "sha256": sha256,
        "key_map": dict(key_map) if key_map is not None else None,
        "missing": missing,
        "unexpected": unexpected,
        "dropped": dropped,
        "loaded": len(state) - len(unexpected),
    }


def _read_checkpoint(path: Path) -> tuple[object, str]:
    """The unpickled contents (tensors and plain containers only) and the sha256 of the file's bytes;
    every way of failing is one line that says what to do."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: weights file not found") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read the weights file ({e})") from None
    if not data:
        raise UserError(f"{path}: not a readable torch checkpoint: the file is empty (0 bytes); was it cut short while "
                        "saving or copying?")
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": the error below says it all
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        code = _code_globals(str(e), data)
        if code:
            raise UserError(
                f"{path}: refused to unpickle {code}: this file asks to run code when loaded (a pickled call or "
                "object, not just tensors); avharness loads only tensors and plain containers "
                "(torch.load(weights_only=True)); if you trust its source, load it yourself and re-save the weights "
                "with torch.save(model.state_dict(), path)"
            ) from None
        raise UserError(
            f"{path}: not a readable torch checkpoint: corrupt, not written by torch.save, or a raw pickle, which "
            "torch.load(weights_only=True) refuses (it loads only tensors and plain containers); re-save the weights "
            "with torch.save(model.state_dict(), path)"
        ) from None
    except Exception as e:  # truncated/corrupt zip, not a torch file at all, ...
        if data[:2] == b"PK" and "central directory" in str(e):
            raise UserError(f"{path}: not a readable torch checkpoint: it is incomplete ({len(data)} bytes; its zip "
                            "directory is missing): cut short while saving or copying? copy or save it again") from None
        raise UserError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {str(e)[:200]}); "
                        "is the file complete and written by torch.save?") from None
    return obj, sha256


def _check_fit(model: nn.Module, target: dict, state: dict, strict: bool, path: Path) -> tuple[list[str], list[str]]:
    """The missing and unexpected keys of ``state`` against the model's own ``target``; a shape mismatch, or
    (when strict) any missing or unexpected key, is one line listing them."""
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    mismatched = [f"{k} (file {tuple(state[k].shape)}, model {tuple(target[k].shape)})"
                  for k in state if k in target and tuple(state[k].shape) != tuple(target[k].shape)]
    if mismatched or (strict and (missing or unexpected)):
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {_listing(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {_listing(unexpected)}")
        if mismatched:
            parts.append(f"{len(mismatched)} with another shape: {_listing(mismatched)}")
        raise UserError(
            f"{path}: the weights do not fit {type(model).__name__} ({'; '.join(parts)}); rename keys with "
            "key_map={'old.prefix.': 'new.prefix.'} (map a prefix to null to drop those keys, e.g. a classifier "
            "for other classes); `avharness model init SUITE -o DIR` writes this model's own keys for comparison"
        )
    return missing, unexpected
