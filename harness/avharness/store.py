"""The run store: trained checkpoints and finished cells, keyed by hashes, written atomically.

Every file is written to a temporary name in the same folder and renamed into place, so a crash
or Ctrl-C leaves either the old file or the new one, never half of one. Files get the mode the
user's umask gives (``mkstemp`` alone would leave them 0600, unreadable to a group sharing results).

A stored cell or model that is unreadable or fails validation (a truncated file, ``{}``, wrong
types) counts as absent: it is recomputed and overwritten, with one log line. An output folder is
locked while a run writes into it (``output_lock``), so two runs never compute the same cells side by side.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import secrets
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import UserError

_UMASK: int | None = None


def file_mode() -> int:
    """0666 less the process umask: the mode ``open()`` would have given a new file."""
    global _UMASK
    if _UMASK is None:
        try:  # Linux shows it without changing it (setting it is process-wide and racy with threads)
            with open("/proc/self/status") as f:
                _UMASK = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
        except (OSError, StopIteration, ValueError, IndexError):
            _UMASK = os.umask(0o022)
            os.umask(_UMASK)
    return 0o666 & ~_UMASK


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with contextlib.suppress(OSError):  # e.g. a file system without permissions
            os.fchmod(fd, file_mode())
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


def json_safe(obj: Any) -> Any:
    """NaN and inf become null: strict JSON has no NaN, and consumers in other languages choke on it."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n")


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


#: what a stored cell must hold (as written by the runner) for it to be reused: key -> check
CELL_FIELDS: dict[str, Callable] = {
    "step": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "eps": lambda v: isinstance(v, dict) and all(e is None or _is_num(e) for e in v.values()),
    "norm": lambda v: isinstance(v, dict) and all(isinstance(n, str) for n in v.values()),
    "canonical": lambda v: isinstance(v, str),
    "n": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
    "metrics": lambda v: isinstance(v, dict) and all(x is None or _is_num(x) for x in v.values()),
    "higher_is_better": lambda v: isinstance(v, dict),
    "wall_s": _is_num,
    "samples": lambda v: isinstance(v, list),
}
OPTIONAL_CELL_FIELDS: dict[str, Callable] = {
    "achieved": lambda v: isinstance(v, dict) and all(_is_num(x) for x in v.values()),
    "attack_stats": lambda v: isinstance(v, dict) and all(_is_num(x) for x in v.values()),
    "details": lambda v: isinstance(v, dict),
    "success_rule": lambda v: v is None or isinstance(v, str),
}
SAMPLE_FIELDS = {"id": lambda v: isinstance(v, (str, int)), "clean_correct": lambda v: isinstance(v, bool),
                 "robust": lambda v: isinstance(v, bool)}


def cell_problem(cell: Any, key: str) -> str | None:
    """Why a stored cell cannot be reused (one phrase), or None when it is whole."""
    if not isinstance(cell, dict):
        return f"holds {type(cell).__name__ if cell is not None else 'null'}, not a cell"
    if "key" not in cell:
        return "no 'key'"
    if cell["key"] != key:
        return f"its key {cell.get('key')!r} is not its file name"
    for fields, required in ((CELL_FIELDS, True), (OPTIONAL_CELL_FIELDS, False)):
        for name, ok in fields.items():
            if name not in cell:
                if required:
                    return f"no {name!r}"
                continue
            if not ok(cell[name]):
                return f"{name!r} has the wrong type or values"
    samples = cell["samples"]
    if len(samples) != cell["n"]:
        return f"{len(samples)} samples for n = {cell['n']}"
    for i, x in enumerate(samples):
        if not isinstance(x, dict) or not all(k in x and ok(x[k]) for k, ok in SAMPLE_FIELDS.items()):
            return f"sample {i} is malformed"
    return None


#: files of a stored model, and what each must hold (a JSON object with these keys)
MODEL_JSON = {"model.json": ("plugin", "params", "task", "specs"), "fit.json": ("wall_s", "defense")}


def _log_stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


class Store:
    """``root/models/<key>/`` holds a checkpoint; ``root/cells/<key>.json`` a finished cell.

    ``log`` receives one line whenever something stored is found damaged and will be recomputed.
    """

    FOLDERS = ("models", "cells", "model_metrics")

    def __init__(self, root: str | Path, log: Callable[[str], None] | None = None):
        self.root = Path(root)
        self.log = log or _log_stderr
        for name in self.FOLDERS:  # a file where a folder belongs: move it aside, recompute what it held
            p = self.root / name
            if (p.exists() or p.is_symlink()) and not p.is_dir():
                aside = _free_name(p.with_name(f"{name}.damaged"))
                try:
                    os.replace(p, aside)
                except OSError as exc:
                    raise UserError(f"{p}: is a file where the store keeps a folder, and it cannot be moved aside "
                                    f"({exc.strerror}); remove it and rerun") from None
                self.log(f"store: {p} was a file, not a folder; moved it to {aside.name} (what it held is recomputed)")

    def model_dir(self, key: str) -> Path:
        return self.root / "models" / key

    def has_model(self, key: str) -> bool:
        d = self.model_dir(key)
        if not all((d / f).exists() for f in ("model.pt", *MODEL_JSON)):
            return False
        for name, keys in MODEL_JSON.items():
            try:
                obj = json.loads((d / name).read_text(encoding="utf-8"))
                problem = None if isinstance(obj, dict) else f"holds {type(obj).__name__}, not an object"
                problem = problem or next((f"no {k!r}" for k in keys if k not in obj), None)
                if problem is None and name == "fit.json" and not _is_num(obj["wall_s"]):
                    problem = "'wall_s' is not a number"
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                problem = f"unreadable ({type(exc).__name__})"
            if problem:
                self.log(f"store: model {d.name}: {name} is damaged ({problem}); retraining it")
                return False
        return True

    def cell_path(self, key: str) -> Path:
        return self.root / "cells" / f"{key}.json"

    def has_cell(self, key: str) -> bool:
        return self.cell_path(key).exists()

    def load_cell(self, key: str) -> dict | None:
        """The stored cell, or None when there is none or it is damaged (then it is recomputed)."""
        path = self.cell_path(key)
        if not path.exists():
            return None
        try:
            cell = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            self.log(f"store: cell {path.name} is unreadable ({type(exc).__name__}); recomputing it")
            return None
        problem = cell_problem(cell, key)
        if problem:
            self.log(f"store: cell {path.name} is damaged ({problem}); recomputing it")
            return None
        return cell

    def save_cell(self, key: str, cell: dict) -> None:
        atomic_write_json(self.cell_path(key), cell)

    def load_model_metric(self, path: Path) -> dict | None:
        """A stored model-scope metric result, or None when absent or damaged (then it is recomputed)."""
        if not path.exists():
            return None
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            self.log(f"store: model metric {path.name} is unreadable ({type(exc).__name__}); recomputing it")
            return None
        if not isinstance(obj, dict) or not isinstance(obj.get("higher_is_better"), dict) \
                or not _is_num(obj.get("wall_s")):
            self.log(f"store: model metric {path.name} is damaged (not a metric result); recomputing it")
            return None
        return obj


def _free_name(path: Path) -> Path:
    out, i = path, 1
    while out.exists() or out.is_symlink():
        out, i = path.with_name(f"{path.name}.{i}"), i + 1
    return out


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


def check_output_folder(folder: str | Path) -> Path:
    """Refuse an output folder that could not be created or written, without creating anything.

    The first existing ancestor must be a writable folder; the run creates the rest only once its
    plan has compiled, so a suite error leaves no empty folder behind.
    """
    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    reason = None
    if probe.exists() and not probe.is_dir():
        reason = "Not a directory"
    elif probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        reason = "Permission denied"
    if reason:
        raise UserError(f"{folder}: output folder is not writable ({reason}); choose another with -o DIR")
    return folder


# ------------------------------------------------------------------------------------ the lock

LOCK_NAME = ".avharness.lock"


def _proc_start(pid: int) -> str | None:
    """A process's start time in clock ticks since boot (Linux), to tell a reused pid from the owner."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        pass
    except OSError:
        return False
    now = _proc_start(pid)
    return start is None or now is None or now == start


def _read_lock(path: Path) -> dict | None:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return info if isinstance(info, dict) else {}


def _describe(info: dict) -> str:
    return (f"pid {info.get('pid', '?')} on {info.get('host', '?')}, since {info.get('started', '?')}"
            + (f": {info['command']}" if info.get("command") else ""))


@contextlib.contextmanager
def output_lock(folder: str | Path, *, wait: bool = False, force_unlock: bool = False, command: str = "",
                log: Callable[[str], None] | None = None, poll_s: float = 1.0) -> Iterator[Path]:
    """Hold ``folder/.avharness.lock`` (owner pid, host, start time) while the block runs.

    Another live run's lock is a UserError naming it (or, with ``wait``, is waited for). A lock whose
    owner is gone is taken over with a log line: on this host when its pid is dead (or reused by another
    process), on another host only with ``force_unlock`` (its pid cannot be checked from here).
    """
    log = log or _log_stderr
    folder = Path(folder)
    path = folder / LOCK_NAME
    host = socket.gethostname()
    pid = os.getpid()
    mine = {"pid": pid, "host": host, "pid_start": _proc_start(pid), "token": secrets.token_hex(8),
            "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "command": command}
    announced = False
    while True:
        if _create(path, mine):
            break
        info = _read_lock(path)
        if info is None:  # released meanwhile
            continue
        if not info:  # being written right now (or damaged): look again shortly, then treat as stale
            time.sleep(0.05)
            again = _read_lock(path)
            if again == {} and _take_over(path, again, log, f"{path} is unreadable; taking it over"):
                continue
            continue
        same_host = info.get("host") == host
        owner = info.get("pid")
        if same_host and isinstance(owner, int) and not _alive(owner, info.get("pid_start")):
            _take_over(path, info, log, f"{folder}: taking over the lock of a run that is gone ({_describe(info)})")
            continue
        if force_unlock and not same_host:
            _take_over(path, info, log, f"{folder}: --force-unlock: removing the lock of {_describe(info)}")
            continue
        if wait:
            if not announced:
                log(f"{folder}: waiting for the run that holds this output folder ({_describe(info)})")
                announced = True
            time.sleep(poll_s)
            continue
        if same_host or not isinstance(owner, int):
            hint = "wait for it to finish (or rerun with --wait), or choose another output folder with -o"
        else:
            hint = ("wait for it to finish (or rerun with --wait), choose another folder with -o, or, if that run is "
                    "dead, rerun with --force-unlock")
        raise UserError(f"{folder}: another avharness run is writing into this output folder ({_describe(info)}); "
                        f"{hint}")
    try:
        yield path
    finally:
        if _read_lock(path) == mine:  # only ever remove our own lock
            with contextlib.suppress(OSError):
                path.unlink()


def _create(path: Path, info: dict) -> bool:
    """Create the lock file with its whole content at once (hard link of a written temp file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".lock-", suffix=".tmp", dir=path.parent)
    try:
        with contextlib.suppress(OSError):
            os.fchmod(fd, file_mode())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(info, f)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links here (some network/FUSE file systems): exclusive create instead
            try:
                fd2 = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, file_mode())
            except FileExistsError:
                return False
            with os.fdopen(fd2, "w", encoding="utf-8") as f:
                json.dump(info, f)
            return True
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _take_over(path: Path, seen: dict, log, message: str) -> bool:
    """Remove a stale lock if it is still the one we judged stale; the caller then retries creating its own."""
    if _read_lock(path) != seen:
        return False
    log(message)
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise UserError(f"{path}: cannot remove this stale lock ({exc.strerror}); remove it by hand and rerun") from None
    return True
