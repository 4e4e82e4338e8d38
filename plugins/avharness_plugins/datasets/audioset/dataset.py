"""The ``audioset`` dataset plugin: AudioSet in the layouts users actually have.

Layouts (``layout``; ``auto`` picks it from the split files' extensions, or else from the first of
``eval_segments.csv``, ``audioset_eval_data.json``, ``data.h5`` present in ``root``):

- ``csv``: the official segment CSVs (``YTID, start, end, "mid,mid"``, three ``#`` header lines)
  with a folder of clips named by YTID (``clips``, default ``root/wav``; ``YTID.wav``,
  ``YTID_30.000.flac``, ``YTID.mp4``, ... see ``audioset_meta.find_clips``).
- ``json``: AST-style manifests ``{"data": [{"wav": path, "labels": "mid,mid"}]}``; ``remap``
  replaces path prefixes (``{"/old/cluster/eval_wav/": "/data/audioset/wav/"}``); ids are the
  file stems.
- ``hdf5``: the seed's layout, a file (optionally a group in it: ``data.h5:eval/data``) holding
  ``feat_a`` [N, T, F] (features, already normalised as the seed wrote them), optional ``feat_v``
  [N, 10, 2048] and ``labels`` [N, 527]; an optional ``ids`` string dataset names the clips (else
  ``<split>/<index>``). Batches read slices: nothing but the current batch is held in memory, and
  the file is opened lazily in each process (safe after a fork).

Labels come from ``class_labels_indices.csv`` (``labels``, default ``root/class_labels_indices.csv``);
the task is multilabel over its display names. Audio for the clip layouts: ``logmel64`` or
``fbank128`` computed per batch, or ``waveform`` (the model applies the pipeline itself; see
``datasets.clips.audio.AudioFrontEnd``). Video (``video``): ``none``; ``features`` -- per-clip ``<id>.npy``
[seconds, dim] in ``video_features`` (default ``root/video_features``) or the HDF5 ``feat_v``;
``decode`` -- clips in ``video_clips`` (default ``root/video``; ``.mp4``/``.mkv``/``.webm`` named by
YTID) decoded at 1 fps and embedded by a frozen torchvision ResNet whose weights the user gives as
a local file (``video_weights``). A clip lacking a requested modality counts as missing.

Relative paths (split files, ``labels``, ``clips``, ``video_features``, ``video_clips``, ``stats``,
``video_weights``, and relative ``wav`` paths in a json manifest) are resolved against ``root``.
Parameters that do not apply to the chosen layout (``clips`` for json, ``remap`` for csv, ``stats``
or ``audio`` for hdf5, ...) are errors rather than silently ignored. The ``missing`` and ``check``
policies concern clip files and have nothing to act on in the hdf5 layout. Missing and unreadable clips, streaming and
the manifest: see ``datasets.clips.dataset``; the HDF5 manifest hashes the file's size and mtime, the group,
the datasets' shapes and dtypes and the ids (not every feature byte).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from avharness import Batch, InputSpec, Task, UserError
from avharness.weights import file_sha256
from avharness_plugins.datasets.audioset.meta import LabelMap, find_clips, read_labels, read_manifest, read_segments
from avharness_plugins.datasets.clips.audio import AudioFrontEnd
from avharness_plugins.datasets.clips.dataset import FORMAT_VERSION, Candidate, ClipDataset, _count
from avharness_plugins.datasets.clips.decode import AUDIO_EXTS, CONTAINER_EXTS
from avharness_plugins.datasets.clips.params import INF, bounds_param, choice, default_workers, positive, resolve
from avharness_plugins.datasets.clips.video import DecodedEmbedded, NpyFeatures, VideoSource

NAME = "audioset"
OWNER = f"dataset {NAME!r}"  # how messages name this plugin
LAYOUTS = ("auto", "csv", "json", "hdf5")
H5_EXTS = (".h5", ".hdf5", ".hdf")
#: default split files per layout: evaluation only (users often just evaluate checkpoints); add
#: a train split with e.g. splits: {eval: eval_segments.csv, train: balanced_train_segments.csv}
DEFAULT_SPLITS = {
    "csv": {"eval": "eval_segments.csv"},
    "json": {"eval": "audioset_eval_data.json"},
    "hdf5": {"eval": "data.h5:eval/data"},
}
WHAT_ROOT_HOLDS = ("a folder holding class_labels_indices.csv and the split files: official segment CSVs "
                   "(eval_segments.csv) with a wav/ folder of clips named by YTID, or an AST json manifest "
                   "(audioset_eval_data.json), or the seed's data.h5")


# Long on purpose: the factory's signature is the suite interface (the suite loader checks every
# parameter against it), and the body validates those 25 parameters one by one, each with its own
# one-line message, before handing them to AudioSetDataset.
def build_audioset(
    root: str | None = None,
    layout: str = "auto",
    splits: dict | None = None,
    labels: str | None = None,
    clips: str | None = None,
    remap: dict | None = None,
    unknown_labels: str = "error",
    audio: str | None = None,
    stats: str | None = None,
    frontend_pipeline: str = "logmel64",
    clip_seconds: float = 10.0,
    audio_bounds: list | None = None,
    video: str = "none",
    video_features: str | None = None,
    video_clips: str | None = None,
    video_backbone: str = "resnet50",
    video_weights: str | None = None,
    video_seconds: int = 10,
    video_bounds: list | None = None,
    video_device: str = "cpu",
    video_cache: bool = True,
    workers: int | None = None,
    missing: str = "skip",
    check: str = "header",
    min_duration: float | None = None,
):
    """The ``audioset`` factory (keyword arguments = suite parameters; see the module docstring).

    Cheap: reads the class list, checks that the files and folders exist and, for HDF5, reads the
    datasets' shapes. Clips are listed and checked on first use.
    """
    if root is None or (isinstance(root, str) and not root.strip()):
        raise UserError(f"dataset {NAME!r} needs data.root: {WHAT_ROOT_HOLDS}; "
                        "pass it with --set data.root=/path/to/audioset")
    if not isinstance(root, str):
        raise UserError(f"dataset {NAME!r}: root must be a folder path (a string), got {root!r}")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise UserError(f"dataset {NAME!r}: data.root {base} does not exist or is not a folder; it must be "
                        f"{WHAT_ROOT_HOLDS}; pass it with --set data.root=/path/to/audioset")
    choice(OWNER, "layout", layout, LAYOUTS)
    choice(OWNER, "unknown_labels", unknown_labels, ("error", "skip"))
    choice(OWNER, "video", video, ("none", "features", "decode"))
    choice(OWNER, "video_device", video_device, ("cpu", "cuda", "auto"))
    choice(OWNER, "missing", missing, ("skip", "error"))
    choice(OWNER, "check", check, ("exists", "header", "decode"))
    positive(OWNER, "video_seconds", video_seconds, integer=True)
    if splits is not None and (not isinstance(splits, dict) or not splits
                               or not all(isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in splits.items())):
        raise UserError(f"dataset {NAME!r}: splits must map split names to files under root "
                        f"(e.g. {{eval: eval_segments.csv}}), got {splits!r}")
    layout = _detect_layout(base, layout, splits)
    split_specs = dict(splits) if splits is not None else dict(DEFAULT_SPLITS[layout])

    label_path = resolve(base, labels) if labels else base / "class_labels_indices.csv"
    if not label_path.is_file():
        raise UserError(f"dataset {NAME!r}: class list {label_path} not found; put AudioSet's "
                        "class_labels_indices.csv (index,mid,display_name) there or pass labels=/path/to/it")
    label_map = read_labels(label_path)

    def unused(**given):
        for key, value in given.items():
            if value is not None:
                raise UserError(f"dataset {NAME!r}: {key} does not apply to the {layout} layout; remove it")

    if layout == "hdf5":
        unused(clips=clips, remap=remap, stats=stats, video_features=video_features, video_clips=video_clips,
               video_weights=video_weights, workers=workers, min_duration=min_duration)
        if audio not in (None, "features"):
            raise UserError(f"dataset {NAME!r}: the hdf5 layout stores audio features (feat_a) already; "
                            f"audio={audio!r} cannot apply; leave audio unset")
        if video == "decode":
            raise UserError(f"dataset {NAME!r}: the hdf5 layout has no clip files to decode; use video: features "
                            "(its feat_v) or none")
        files = {s: _h5_spec(base, s, v) for s, v in split_specs.items()}
        return AudioSetHDF5(base, label_map, label_path, files, video == "features", audio_bounds, video_bounds)

    unused(audio_bounds=audio_bounds)
    if layout == "json":
        unused(clips=clips)
    else:
        unused(remap=remap)
    files = {}
    for split, rel in split_specs.items():
        p = resolve(base, rel)
        if not p.is_file():
            raise UserError(f"dataset {NAME!r}: split {split!r} file {p} not found (splits.{split}); give the "
                            f"{'segment CSV' if layout == 'csv' else 'json manifest'} of that split, relative to root")
        files[split] = p
    return AudioSetClips(
        base, layout, label_map, label_path, files,
        clips=resolve(base, clips) if clips else base / "wav", remap=remap, unknown_labels=unknown_labels,
        audio=audio or "logmel64", stats=stats, frontend_pipeline=frontend_pipeline, clip_seconds=clip_seconds,
        video=video, video_features=resolve(base, video_features or "video_features"),
        video_clips=resolve(base, video_clips or "video"), video_backbone=video_backbone,
        video_weights=str(resolve(base, video_weights)) if video_weights else None, video_seconds=video_seconds,
        video_bounds=video_bounds, video_device=video_device, video_cache=video_cache, missing=missing, check=check,
        workers=workers, min_duration=min_duration,
    )


def _is_h5(text: str) -> bool:
    path = text.rsplit(":", 1)[0] if ":" in text else text
    return Path(path).suffix.lower() in H5_EXTS


def _detect_layout(root: Path, layout: str, splits: dict | None) -> str:
    if layout != "auto":
        return layout
    if splits:
        kinds = {("hdf5" if _is_h5(v) else "json" if v.lower().endswith(".json") else
                  "csv" if v.lower().endswith(".csv") else "?") for v in splits.values()}
        if len(kinds) == 1 and "?" not in kinds:
            return kinds.pop()
        raise UserError(f"dataset {NAME!r}: cannot tell the layout from the split files {splits!r} (expected all "
                        ".csv, all .json or all .h5); set layout: csv, json or hdf5")
    for kind in ("csv", "json", "hdf5"):
        if (root / DEFAULT_SPLITS[kind]["eval"].split(":")[0]).is_file():
            return kind
    raise UserError(f"dataset {NAME!r}: {root} holds none of eval_segments.csv, audioset_eval_data.json, data.h5; "
                    "name the split files with splits (e.g. {eval: my_segments.csv}) or pass the right root")


def _h5_spec(root: Path, split: str, text: str) -> tuple[Path, str]:
    path, group = text, "/"
    if ":" in text and _is_h5(text):
        path, group = text.rsplit(":", 1)
    p = resolve(root, path)
    if not p.is_file():
        raise UserError(f"dataset {NAME!r}: split {split!r} file {p} not found (splits.{split}); give the HDF5 "
                        "file, optionally with a group: data.h5:eval/data")
    return p, group.strip("/") or "/"


# --------------------------------------------------------------------------------- csv / json


class AudioSetClips(ClipDataset):
    """AudioSet from clip files, listed by segment CSVs or AST json manifests."""

    name = NAME

    def __init__(self, root: Path, layout: str, label_map: LabelMap, label_path: Path, files: dict[str, Path], *,
                 clips: Path, remap, unknown_labels: str, audio: str, stats, frontend_pipeline: str, clip_seconds,
                 video: str, video_features: Path, video_clips: Path, video_backbone: str, video_weights,
                 video_seconds: int, video_bounds, video_device: str, video_cache: bool, missing: str, check: str,
                 workers: int | None = None, min_duration: float | None = None):
        self.layout = layout
        self.labels = label_map
        self.clips_folder = clips
        self.remap = remap
        self.unknown = unknown_labels
        if layout == "csv" and not clips.is_dir():
            raise UserError(f"dataset {NAME!r}: clip folder {clips} does not exist; put the clips named by YTID "
                            "(YTID.wav, YTID.flac, YTID.mp4, ...) there or set clips to their folder")
        if layout == "json" and remap is not None and (
                not isinstance(remap, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in remap.items())):
            raise UserError(f"dataset {NAME!r}: remap must map old path prefixes to new ones "
                            f"(e.g. {{/cluster/eval_wav/: /data/audioset/wav/}}), got {remap!r}")
        audio_fe = AudioFrontEnd(OWNER, audio, stats, frontend_pipeline, clip_seconds, root)
        source: VideoSource = VideoSource()
        self.video_clips = video_clips
        if video == "features":
            source = NpyFeatures(OWNER, video_features, video_seconds, video_bounds)
        elif video == "decode":
            if not video_clips.is_dir():
                raise UserError(f"dataset {NAME!r}: video clip folder {video_clips} does not exist; put the video "
                                "clips named by YTID (YTID.mp4, ...) there or set video_clips to their folder")
            source = DecodedEmbedded(OWNER, video_seconds, video_backbone, video_weights, video_device, video_bounds,
                                     cache=video_cache)
        elif video_bounds is not None:
            raise UserError(f"dataset {NAME!r}: video_bounds given but video is 'none'; remove it or set video")
        self._setup(root=root, task=Task("multilabel", label_map.names), split_files=files, audio_fe=audio_fe,
                    video=source, missing=missing, check=check, classes_file=label_path, workers=default_workers(workers),
                    min_duration=min_duration)

    def _targets(self, mids, where: str, skipped: Counter) -> tuple[int, ...]:
        out = []
        for mid in mids:
            if mid in self.labels:
                out.append(self.labels.index(mid))
            elif self.unknown == "error":
                raise UserError(f"{where}: label {mid!r} is not in the class list {self.labels.source}; use the "
                                "class_labels_indices.csv that goes with these segments, or set unknown_labels: skip")
            else:
                skipped[mid] += 1
        return tuple(sorted(set(out)))

    def _candidates(self, split: str) -> tuple[list[Candidate], dict]:
        path = self.split_files[split]
        skipped: Counter = Counter()
        rows: list[tuple[str, tuple[int, ...], Path | None, str | None]] = []
        if self.layout == "csv":
            segments = read_segments(path)
            _no_duplicates([s.ytid for s in segments], path)
            found, _ = find_clips(segments, self.clips_folder, exts=AUDIO_EXTS)
            for s in segments:
                target = self._targets(s.mids, f"{path}: segment {s.ytid}", skipped)
                a = found.get(s.ytid)
                rows.append((s.ytid, target, a,
                             None if a else f"no audio file matching {s.ytid} in {self.clips_folder}"))
            keys = segments
        else:
            entries = read_manifest(path, self.remap)
            ids = [e.wav.stem for e in entries]
            _no_duplicates(ids, path)
            for i, (sid, e) in enumerate(zip(ids, entries)):
                target = self._targets(e.mids, f"{path}: data[{i}] ({e.wav.name})", skipped)
                rows.append((sid, target, resolve(self.root, e.wav), None))
            keys = ids
        videos: dict[str, Path] = {}
        if isinstance(self.video, NpyFeatures):
            videos = self.video.locate([r[0] for r in rows])
        elif isinstance(self.video, DecodedEmbedded):
            videos, _ = find_clips(keys, self.video_clips, exts=CONTAINER_EXTS)
        cands = []
        for sid, target, audio, reason in rows:
            v = videos.get(sid)
            if reason is None and self.video.needs_file and v is None:
                reason = f"no video file matching {sid} in {self.video_clips}"
            cands.append(Candidate(sid, target, audio, v, reason))
        notes = {"no_known_label": sum(1 for c in cands if not c.target)}
        if skipped:
            notes["unknown_labels_skipped"] = dict(skipped.most_common())
        return cands, notes

    def info(self) -> dict:
        d = super().info()
        d["files"] = {"labels": str(self.labels.source), "splits": {s: str(p) for s, p in self.split_files.items()}}
        if self.layout == "csv":
            d["files"]["clips"] = str(self.clips_folder)
        if self.remap:
            d["files"]["remap"] = dict(self.remap)
        d["unknown_labels"] = self.unknown
        return d


def _no_duplicates(ids: list[str], path: Path) -> None:
    seen = Counter(ids)
    dup = [i for i, c in seen.items() if c > 1]
    if dup:
        raise UserError(f"{path}: clip id {dup[0]!r} appears {seen[dup[0]]} times ({len(dup)} duplicated ids); each "
                        "clip must be listed once per split")


# --------------------------------------------------------------------------------------- hdf5


class _H5:
    """One split's HDF5 group, opened lazily in each process (an h5py handle must not cross a fork)."""

    def __init__(self, path: Path, group: str):
        self.path, self.group_name = path, group
        self._file = None
        self._pid = None

    def group(self):
        import h5py

        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file if self.group_name == "/" else self._file[self.group_name]

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def __getstate__(self):
        return {"path": self.path, "group_name": self.group_name, "_file": None, "_pid": None}


def _hdf5_shapes(path: Path, group: str, split: str, video: bool) -> dict[str, tuple[list[int], str]]:
    """Shape and dtype of each dataset the seed layout needs in ``path:group`` (read without loading data)."""
    import h5py

    where = f"{path}:{group}" if group != "/" else str(path)
    try:
        with h5py.File(path, "r") as f:
            if group != "/" and group not in f:
                raise UserError(f"dataset {NAME!r}: {path} has no group {group!r} (splits.{split}); "
                                f"its top-level keys: {', '.join(sorted(f.keys())[:8])}")
            g = f if group == "/" else f[group]
            need = ["feat_a", "labels"] + (["feat_v"] if video else [])
            lacking = [k for k in need if k not in g or not isinstance(g[k], h5py.Dataset)]
            if lacking:
                hint = " (video: features needs feat_v; set video: none for audio only)" if "feat_v" in lacking else ""
                raise UserError(f"dataset {NAME!r}: {where} lacks the dataset(s) {', '.join(lacking)}{hint}; "
                                "the seed layout holds feat_a [N,T,F], labels [N,527] and optionally feat_v")
            keys = need + (["ids"] if "ids" in g else [])
            return {k: (list(g[k].shape), str(g[k].dtype)) for k in keys}
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"dataset {NAME!r}: cannot read {path} as HDF5 ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}); check the file (splits.{split})") from None


def _check_hdf5_shapes(sh: dict[str, tuple[list[int], str]], where: str, label_map: LabelMap, label_path: Path) -> None:
    """One row per clip in every dataset, feat_a [N, T, F] with N > 0, labels [N, classes]."""
    n = sh["feat_a"][0][0]
    for k, (shape, _) in sh.items():
        if not shape or shape[0] != n:
            raise UserError(f"dataset {NAME!r}: {where}: {k} has {shape[0] if shape else 0} rows but feat_a "
                            f"has {n}; every dataset must hold one row per clip")
    if len(sh["feat_a"][0]) < 2:
        raise UserError(f"dataset {NAME!r}: {where}: feat_a has shape {sh['feat_a'][0]}; expected [N, T, F]")
    if sh["labels"][0][1:] != [len(label_map)]:
        raise UserError(f"dataset {NAME!r}: {where}: labels has shape {sh['labels'][0]} but the class list "
                        f"{label_path} has {len(label_map)} classes; use the matching class_labels_indices.csv")
    if n == 0:
        raise UserError(f"dataset {NAME!r}: {where} holds no clips (feat_a has 0 rows)")


class AudioSetHDF5:
    """The seed's HDF5 layout: precomputed ``feat_a``, optional ``feat_v``, ``labels`` (see module docstring)."""

    name = NAME
    layout = "hdf5"

    def __init__(self, root: Path, label_map: LabelMap, label_path: Path, files: dict[str, tuple[Path, str]],
                 video: bool, audio_bounds, video_bounds):
        self.root, self.labels, self.label_path, self.files = root, label_map, label_path, files
        self.task = Task("multilabel", label_map.names)
        self._shapes: dict[str, dict[str, tuple[list[int], str]]] = {}
        shapes_a, shapes_v = {}, {}
        for split, (path, group) in files.items():
            where = f"{path}:{group}" if group != "/" else str(path)
            self._shapes[split] = sh = _hdf5_shapes(path, group, split, video)
            _check_hdf5_shapes(sh, where, label_map, label_path)
            shapes_a[split] = tuple(sh["feat_a"][0][1:])
            if video:
                shapes_v[split] = tuple(sh["feat_v"][0][1:])
        for what, shapes in (("feat_a", shapes_a), ("feat_v", shapes_v)):
            if len(set(shapes.values())) > 1:
                raise UserError(f"dataset {NAME!r}: the splits' {what} shapes differ ({shapes}); every split must "
                                "hold clips of the same shape")
        # what the features mean (their normalisation, their range) is fixed by whoever wrote the
        # file: open bounds unless the user states them
        self.audio_bounds = bounds_param(OWNER, "audio_bounds", audio_bounds, (-INF, INF))
        self.specs = {"audio": InputSpec(next(iter(shapes_a.values())), self.audio_bounds, "feature (HDF5 feat_a, as stored)")}
        self.video = video
        if video:
            self.video_bounds = bounds_param(OWNER, "video_bounds", video_bounds, (-INF, INF))
            self.specs["video"] = InputSpec(next(iter(shapes_v.values())), self.video_bounds,
                                            "video features (HDF5 feat_v, as stored)")
        elif video_bounds is not None:
            raise UserError(f"dataset {NAME!r}: video_bounds given but video is 'none'; remove it or set video: features")
        self._readers = {s: _H5(p, g) for s, (p, g) in files.items()}
        self._manifests: dict[str, str] = {}

    def splits(self) -> tuple[str, ...]:
        return tuple(self.files)

    def close(self) -> None:
        """Close this process's file handles (they reopen on the next read)."""
        for reader in self._readers.values():
            reader.close()

    def _check_split(self, split: str) -> str:
        if split not in self.files:
            raise UserError(f"dataset {NAME!r} has no split {split!r}; it has: {', '.join(self.files)} "
                            "(add one with the splits parameter, e.g. {valid: data.h5:valid/data})")
        return split

    def size(self, split: str) -> int:
        return self._shapes[self._check_split(split)]["feat_a"][0][0]

    def batches(self, split: str, batch_size: int, *, shuffle: torch.Generator | None = None,
                limit: int | None = None) -> Iterator[Batch]:
        n = _count(OWNER, self.size(split), batch_size, limit)
        order = None if shuffle is None else torch.randperm(n, generator=shuffle).numpy()
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            if order is None:
                yield self._read(split, slice(start, stop), np.arange(start, stop))
            else:
                idx = order[start:stop]
                yield self._read(split, idx, idx)

    def _read(self, split: str, sel, idx: np.ndarray) -> Batch:
        g = self._readers[split].group()
        if isinstance(sel, slice):
            take = lambda k: g[k][sel]  # noqa: E731 - one contiguous hyperslab per dataset
        else:
            # h5py wants increasing indices: read sorted, then put the rows back in batch order
            sorted_idx = np.sort(sel)
            back = np.argsort(np.argsort(sel))
            take = lambda k: g[k][sorted_idx][back]  # noqa: E731
        inputs = {"audio": torch.from_numpy(np.ascontiguousarray(take("feat_a"), dtype=np.float32))}
        _within(inputs["audio"], self.audio_bounds, "audio_bounds", split, idx)
        if self.video:
            inputs["video"] = torch.from_numpy(np.ascontiguousarray(take("feat_v"), dtype=np.float32))
            _within(inputs["video"], self.video_bounds, "video_bounds", split, idx)
        target = torch.from_numpy(np.ascontiguousarray(take("labels"), dtype=np.float32))
        if "ids" in self._shapes[split]:
            ids = [x.decode() if isinstance(x, bytes) else str(x) for x in take("ids")]
        else:
            ids = [_row_id(split, int(i)) for i in idx]
        return Batch(inputs, target, ids)

    def manifest(self, split: str) -> str:
        self._check_split(split)
        if split not in self._manifests:
            path, group = self.files[split]
            st = path.stat()
            head = {"dataset": NAME, "format": FORMAT_VERSION, "layout": "hdf5", "split": split, "file": path.name,
                    "size": st.st_size, "mtime_ns": st.st_mtime_ns, "group": group,
                    "datasets": self._shapes[split], "classes_sha256": file_sha256(self.label_path),
                    "audio_bounds": list(self.audio_bounds), "video": self.video}
            h = hashlib.sha256(json.dumps(head, sort_keys=True).encode())
            if "ids" in self._shapes[split]:
                g = self._readers[split].group()
                n = self.size(split)
                for start in range(0, n, 65536):  # chunked: never the whole column at once
                    for x in g["ids"][start:start + 65536]:
                        h.update(b"\n" + (x if isinstance(x, bytes) else str(x).encode()))
            self._manifests[split] = h.hexdigest()
        return self._manifests[split]

    def info(self) -> dict:
        return {
            "dataset": NAME,
            "format_version": FORMAT_VERSION,
            "layout": "hdf5",
            "root": str(self.root),
            "files": {"labels": str(self.label_path),
                      "splits": {s: f"{p}:{g}" if g != "/" else str(p) for s, (p, g) in self.files.items()}},
            "classes": {"n": self.task.num_classes, "source": str(self.label_path), "kind": "multilabel"},
            "audio": {"source": "HDF5 feat_a, used as stored (no feature pipeline or normalisation applied "
                                "by avharness)", "shape": list(self.specs["audio"].shape),
                      "bounds": self.specs["audio"].to_dict()["bounds"],
                      "bounds_note": "open unless audio_bounds is given: the file's writer fixed what the values mean"},
            "video": ({"source": "HDF5 feat_v, used as stored", "shape": list(self.specs["video"].shape),
                       "bounds": self.specs["video"].to_dict()["bounds"]} if self.video else {"source": "none"}),
            "datasets": self._shapes,
            "splits": {s: {"file": f"{p}:{g}" if g != "/" else str(p), "listed": self.size(s), "usable": self.size(s),
                           "missing": 0, "missing_items": []} for s, (p, g) in self.files.items()},
            "missing_note": "an HDF5 file holds every clip's features: no clip can be missing",
        }

    def feature_stats(self, split: str, limit: int | None = None, batch_size: int = 16) -> dict:
        raise UserError(f"dataset {NAME!r}: the hdf5 layout holds precomputed features, not waveforms; feature "
                        "statistics need the clips (csv or json layout)")


def _row_id(split: str, i: int) -> str:
    return f"{split}/{i:06d}"


def _within(x: torch.Tensor, bounds, param: str, split: str, idx) -> None:
    lo, hi = bounds
    if (math.isfinite(lo) and float(x.min()) < lo) or (math.isfinite(hi) and float(x.max()) > hi):
        raise UserError(f"dataset {NAME!r}: split {split!r} rows {int(idx[0])}..{int(idx[-1])} range over "
                        f"[{float(x.min()):.4g}, {float(x.max()):.4g}], outside {param} [{lo:g}, {hi:g}]; "
                        f"set {param} to the stored features' valid range")


def register_datasets(register):
    register(NAME, build_audioset)
