"""AudioSet metadata: class list, segment CSVs, AST-style json manifests, multi-hot targets, clip lookup.

Pure functions only (no plugin registration); the AudioSet dataset plugin builds on them.

Files understood (as published by Google and by the AST recipe):

* ``class_labels_indices.csv`` -- header ``index,mid,display_name`` then one row per class, names
  quoted when they contain commas (``1,/m/05zppz,"Male speech, man speaking"``). 527 classes.
  Indices must be exactly 0..N-1 (in any order), mids and indices unique.
* ``eval_segments.csv`` / ``balanced_train_segments.csv`` / ``unbalanced_train_segments.csv`` --
  comment lines starting with ``#``, then ``YTID, start_seconds, end_seconds, "mid1,mid2"`` (a space
  after each comma, the label list quoted).
* AST json manifests -- ``{"data": [{"wav": "/abs/path/x.wav", "labels": "/m/..,/m/.."}, ...]}``;
  the absolute paths point at the machine that wrote them, hence ``remap``.
* A folder of clips named by YTID: ``YTID.wav`` or ``YTID_<anything>.wav`` (e.g. ``YTID_30.wav``,
  ``YTID_30.000.wav``, ``YTID_30000_40000.flac``); see :func:`find_clips`.

Every problem with the user's files is a :class:`~avharness.errors.UserError` naming the file and,
where there is one, the line (``file:line``) or json key path, and saying what to do.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from avharness.errors import UserError

__all__ = [
    "LabelMap",
    "Segment",
    "ManifestEntry",
    "read_labels",
    "read_segments",
    "read_manifest",
    "split_mids",
    "multi_hot",
    "find_clips",
]

NUM_CLASSES = 527  # the published ontology subset; read_labels does not enforce it


@dataclass(frozen=True)
class LabelMap:
    """The class list: index <-> mid <-> display name. ``mids[i]`` and ``names[i]`` belong to index i."""

    mids: tuple[str, ...]
    names: tuple[str, ...]
    source: str = ""
    _index: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self._index:
            self._index.update({m: i for i, m in enumerate(self.mids)})

    def __len__(self) -> int:
        return len(self.mids)

    def __contains__(self, mid: object) -> bool:
        return mid in self._index

    def index(self, mid: str) -> int:
        """Index of ``mid``; UserError when the class list has no such mid."""
        try:
            return self._index[mid]
        except KeyError:
            where = f" ({self.source})" if self.source else ""
            raise UserError(
                f"AudioSet label {mid!r} is not in the class list{where}; "
                "check the mid or use the class_labels_indices.csv that goes with these segments"
            ) from None

    def name(self, mid: str) -> str:
        return self.names[self.index(mid)]

    def mid(self, index: int) -> str:
        return self.mids[index]


@dataclass(frozen=True)
class Segment:
    """One row of a segment CSV: a 10-s (or shorter) window of a YouTube video and its positive labels."""

    ytid: str
    start: float
    end: float
    mids: tuple[str, ...]


@dataclass(frozen=True)
class ManifestEntry:
    """One item of an AST json manifest, after path remapping."""

    wav: Path
    mids: tuple[str, ...]


def _open_text(path: str | Path, what: str) -> tuple[Path, str]:
    p = Path(path)
    try:
        return p, p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{what} {p} does not exist; check the path") from None
    except IsADirectoryError:
        raise UserError(f"{what} {p} is a folder, expected a file; check the path") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{what} {p} is not UTF-8 text ({e.reason} at byte {e.start}); check it is the right file") from None


def split_mids(text: str) -> tuple[str, ...]:
    """``"/m/a, /m/b"`` -> ``("/m/a", "/m/b")``; blanks are dropped."""
    return tuple(m.strip() for m in text.split(",") if m.strip())


# ---------------------------------------------------------------------------------------------- labels


def read_labels(path: str | Path) -> LabelMap:
    """Read ``class_labels_indices.csv`` (``index,mid,display_name``) into a :class:`LabelMap`."""
    p, text = _open_text(path, "AudioSet class list")
    rows = csv.reader(text.splitlines(), skipinitialspace=True)
    by_index: dict[int, tuple[str, str, int]] = {}
    line_of_mid: dict[str, int] = {}
    header_seen = False
    for lineno, row in enumerate(rows, start=1):
        if not row or (len(row) == 1 and not row[0].strip()) or row[0].lstrip().startswith("#"):
            continue
        if not header_seen:
            header_seen = True
            if [c.strip().lower() for c in row] != ["index", "mid", "display_name"]:
                raise UserError(
                    f"{p}:{lineno}: expected the header 'index,mid,display_name', got {','.join(row)!r}; "
                    "is this AudioSet's class_labels_indices.csv?"
                )
            continue
        if len(row) != 3:
            raise UserError(
                f"{p}:{lineno}: expected 3 fields 'index,mid,display_name' (quote names that contain commas), "
                f"got {len(row)}: {row!r}"
            )
        idx_s, mid, name = (c.strip() for c in row)
        try:
            idx = int(idx_s)
        except ValueError:
            raise UserError(f"{p}:{lineno}: class index {idx_s!r} is not an integer; fix the row") from None
        if idx < 0:
            raise UserError(f"{p}:{lineno}: class index {idx} is negative; indices must be 0..N-1")
        if not mid:
            raise UserError(f"{p}:{lineno}: empty mid for class index {idx}; fix the row")
        if idx in by_index:
            raise UserError(
                f"{p}:{lineno}: duplicate class index {idx} (first on line {by_index[idx][2]}); each index must appear once"
            )
        if mid in line_of_mid:
            raise UserError(
                f"{p}:{lineno}: duplicate mid {mid!r} (first on line {line_of_mid[mid]}); each mid must appear once"
            )
        by_index[idx] = (mid, name, lineno)
        line_of_mid[mid] = lineno
    if not header_seen:
        raise UserError(f"{p}: the file is empty; expected AudioSet's class_labels_indices.csv")
    if not by_index:
        raise UserError(f"{p}: the header is there but no classes follow; expected rows 'index,mid,display_name'")
    n = len(by_index)
    missing = sorted(set(range(n)) - set(by_index))
    if missing:
        extra = sorted(i for i in by_index if i >= n)
        raise UserError(
            f"{p}:{by_index[extra[0]][2]}: class indices must be 0..{n - 1} without gaps, "
            f"but index {missing[0]} is missing and {extra[0]} is out of range; renumber the classes"
        )
    mids = tuple(by_index[i][0] for i in range(n))
    names = tuple(by_index[i][1] for i in range(n))
    return LabelMap(mids=mids, names=names, source=str(p))


# -------------------------------------------------------------------------------------------- segments


def read_segments(path: str | Path) -> list[Segment]:
    """Read an AudioSet segment CSV (``YTID, start_seconds, end_seconds, "mid1,mid2"``).

    Lines starting with ``#`` (the three header comments) and blank lines are skipped; the space after
    each comma and the quoted label list are handled by the csv module (``skipinitialspace``).
    """
    p, text = _open_text(path, "AudioSet segment list")
    out: list[Segment] = []
    lines = text.splitlines()
    for lineno, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            row = next(csv.reader([line], skipinitialspace=True, strict=True))
        except csv.Error as e:
            raise UserError(f"{p}:{lineno}: cannot parse the line ({e}); expected 'YTID, start, end, \"mid1,mid2\"'") from None
        if len(row) != 4:
            raise UserError(
                f"{p}:{lineno}: expected 4 fields 'YTID, start_seconds, end_seconds, \"mid1,mid2\"' "
                f"(the label list quoted), got {len(row)}: {line.strip()[:80]!r}"
            )
        ytid, start_s, end_s, labels = (c.strip() for c in row)
        if not ytid:
            raise UserError(f"{p}:{lineno}: empty YTID; fix or remove the line")
        try:
            start, end = float(start_s), float(end_s)
        except ValueError:
            raise UserError(
                f"{p}:{lineno}: start/end seconds {start_s!r}, {end_s!r} are not numbers; fix the line"
            ) from None
        if not (0 <= start < end):
            raise UserError(f"{p}:{lineno}: segment {ytid} has start {start} and end {end}; need 0 <= start < end")
        mids = split_mids(labels)
        if not mids:
            raise UserError(f"{p}:{lineno}: segment {ytid} has no labels; every AudioSet segment has at least one")
        out.append(Segment(ytid, start, end, mids))
    return out


# -------------------------------------------------------------------------------------------- manifest


def _remap(path: str, remap: Mapping[str, str] | None) -> str:
    if not remap:
        return path
    for old in sorted(remap, key=len, reverse=True):  # the longest matching prefix wins
        if path.startswith(old):
            return remap[old] + path[len(old):]
    return path


def read_manifest(path: str | Path, remap: Mapping[str, str] | None = None) -> list[ManifestEntry]:
    """Read an AST-style json manifest ``{"data": [{"wav": ..., "labels": "/m/..,/m/.."}]}``.

    ``remap`` maps old path prefixes to new ones (``{"/old/cluster/": "/data/audioset/"}``); for each
    wav path the longest matching prefix is replaced, paths matching none are kept. Nothing is
    checked on disk here.
    """
    p, text = _open_text(path, "AudioSet manifest")
    if remap is not None:
        if not isinstance(remap, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in remap.items()):
            raise UserError(f"manifest remap for {p} must map old path prefixes (str) to new ones (str), got {remap!r}")
        if "" in remap:
            raise UserError(f"manifest remap for {p} has an empty prefix; give the old prefix to replace")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{p}:{e.lineno}: not valid json ({e.msg}, column {e.colno}); fix the manifest") from None
    if not isinstance(doc, dict) or "data" not in doc:
        got = f"keys {sorted(doc)[:5]}" if isinstance(doc, dict) else f"a json {type(doc).__name__}"
        raise UserError(
            f"{p}: expected an AST manifest {{\"data\": [{{\"wav\": ..., \"labels\": ...}}]}}, got {got}; "
            "add the top-level 'data' list"
        )
    items = doc["data"]
    if not isinstance(items, list):
        raise UserError(f"{p}: 'data' must be a list of {{\"wav\", \"labels\"}} objects, got a json {type(items).__name__}")
    out: list[ManifestEntry] = []
    for i, item in enumerate(items):
        where = f"{p}: data[{i}]"
        if not isinstance(item, dict):
            raise UserError(f"{where} must be an object with 'wav' and 'labels', got a json {type(item).__name__}")
        for key in ("wav", "labels"):
            if key not in item:
                raise UserError(f"{where} has no {key!r} key; every entry needs 'wav' and 'labels'")
            if not isinstance(item[key], str) or not item[key].strip():
                raise UserError(f"{where}.{key} must be a non-empty string, got {item[key]!r}")
        mids = split_mids(item["labels"])
        out.append(ManifestEntry(Path(_remap(item["wav"], remap)), mids))
    return out


# ------------------------------------------------------------------------------------------- multi-hot


def multi_hot(
    mids: Iterable[str],
    labels: LabelMap,
    unknown: str = "error",
    skipped: Counter | None = None,
) -> torch.Tensor:
    """A float32 ``[len(labels)]`` target with 1 at the index of each mid.

    ``unknown`` is the policy for mids that the class list lacks: ``"error"`` raises a UserError
    naming the mid; ``"skip"`` leaves them out and, if ``skipped`` (a Counter) is given, counts them
    there, so a caller can report ``skipped`` once over a whole dataset.
    """
    if unknown not in ("error", "skip"):
        raise UserError(f"multi_hot: unknown must be 'error' or 'skip', got {unknown!r}")
    y = torch.zeros(len(labels), dtype=torch.float32)
    for mid in mids:
        if mid in labels:
            y[labels.index(mid)] = 1.0
        elif unknown == "error":
            labels.index(mid)  # raises the UserError naming the mid
        elif skipped is not None:
            skipped[mid] += 1
    return y


# ---------------------------------------------------------------------------------------------- clips


def _start_tags(start: float) -> set[str]:
    tags = {f"{start:.3f}", f"{start:g}", str(int(start * 1000))}
    if float(start).is_integer():
        tags.add(str(int(start)))
    return tags


def find_clips(
    segments: Sequence[Segment | str],
    folder: str | Path,
    exts: Sequence[str] = (".wav", ".flac"),
) -> tuple[dict[str, Path], list[str]]:
    """Find each segment's clip in ``folder`` (not recursive); return ``(found ytid->path, missing ytids)``.

    A clip matches a YTID when its file name is ``YTID<ext>`` or ``YTID_<anything><ext>`` with ``<ext>``
    in ``exts`` (case-insensitive), e.g. ``abc.wav``, ``abc_30.wav``, ``abc_30.000.flac``,
    ``abc_30000_40000.wav``. When several files match: ``YTID<ext>`` wins over suffixed names, then a
    suffix whose first part is the segment's start (``30``, ``30.000`` or ``30000`` ms), then the
    earlier extension in ``exts``; if several suffixed names with different suffixes still tie, that is a
    UserError naming them. ``missing`` keeps the order of ``segments``; ``segments`` may also be plain
    YTID strings.
    """
    d = Path(folder)
    if not d.is_dir():
        raise UserError(f"AudioSet clip folder {d} does not exist or is not a folder; check the path")
    ext_rank = {e.lower() if e.startswith(".") else "." + e.lower(): r for r, e in enumerate(exts)}
    exact: dict[str, list[Path]] = {}
    prefixed: dict[str, list[Path]] = {}
    for f in d.iterdir():
        suffix = f.suffix.lower()
        if suffix not in ext_rank or not f.is_file():
            continue
        stem = f.name[: -len(f.suffix)]
        exact.setdefault(stem, []).append(f)
        for i, ch in enumerate(stem):
            if ch == "_" and i > 0:
                prefixed.setdefault(stem[:i], []).append(f)
    found: dict[str, Path] = {}
    missing: list[str] = []
    for seg in segments:
        ytid = seg if isinstance(seg, str) else seg.ytid
        if ytid in found:
            continue
        cands = exact.get(ytid)
        if cands:
            found[ytid] = min(cands, key=lambda f: (ext_rank[f.suffix.lower()], f.name))
            continue
        cands = prefixed.get(ytid)
        if not cands:
            missing.append(ytid)
            continue
        if not isinstance(seg, str):
            tags = _start_tags(seg.start)
            at_start = [f for f in cands if f.name[len(ytid) + 1: -len(f.suffix)].split("_")[0] in tags]
            cands = at_start or cands
        suffixes = {f.name[len(ytid): -len(f.suffix)] for f in cands}
        if len(suffixes) > 1:
            names = ", ".join(sorted(f.name for f in cands)[:4])
            raise UserError(
                f"{d}: several clips match YTID {ytid} ({names}); keep one per segment or name it {ytid}.wav"
            )
        found[ytid] = min(cands, key=lambda f: (ext_rank[f.suffix.lower()], f.name))
    return found, missing
