"""The ``kinetics_sounds`` dataset plugin: the Kinetics-Sounds subset of Kinetics, single-label.

The class list is a data file (``data/kinetics_sounds_classes.txt``: the 34 classes of
Arandjelovic & Zisserman's "Look, Listen and Learn", with its provenance) or any file of the same
form given as ``classes`` (one name per line, ``#`` comments). No official manifest exists (docs/seed_code.md
§2.4), so a split is a CSV of clips: header ``path,label``, one row per clip; relative paths are
resolved against the CSV's folder; a label must name a class (matched ignoring case, ``_`` as a
space). Splits: ``splits`` maps names to CSVs (relative to ``root``); by default whichever of
``train.csv``, ``val.csv``, ``test.csv`` exist in ``root``.

Audio and video are decoded from each clip with PyAV. Audio goes through a feature pipeline
(``logmel64`` / ``fbank128``) or stays a waveform with a ``frontend`` for the model (as in
``audioset``). Video: ``frames`` -- ``frames`` RGB frames at 1 fps, resized (shorter side) and
centre-cropped to ``image_size``, [T, 3, S, S] in [0, 1]; ``features`` -- the same frames embedded
by a frozen torchvision ResNet whose weights the user gives as a local file (``video_weights``),
[T, D] in [0, inf); or ``none``. Sample ids are the clip file stems. ``classes``, ``splits``,
``stats`` and ``video_weights`` paths are resolved against ``root`` when relative; clip paths in a
manifest against the manifest's folder. Missing and unreadable clips, streaming and the manifest
follow ``datasets.clips.dataset``.
"""

from __future__ import annotations

import csv
import difflib
import re
from importlib import resources
from pathlib import Path

from avharness import Task, UserError
from avharness_plugins.datasets.clips.audio import AudioFrontEnd
from avharness_plugins.datasets.clips.dataset import Candidate, ClipDataset
from avharness_plugins.datasets.clips.params import choice, default_workers, positive, resolve
from avharness_plugins.datasets.clips.video import DecodedEmbedded, DecodedFrames, VideoSource

NAME = "kinetics_sounds"
OWNER = f"dataset {NAME!r}"  # how messages name this plugin
DEFAULT_SPLIT_NAMES = ("train", "val", "test")


def bundled_classes_path() -> Path:
    """The class list shipped with avharness (a real file inside the installed package)."""
    return Path(str(resources.files("avharness_plugins.datasets") / "data" / "kinetics_sounds_classes.txt"))


def normalise(label: str) -> str:
    return re.sub(r"\s+", " ", label.replace("_", " ")).strip().lower()


def read_classes(path: Path) -> tuple[str, ...]:
    """Class names, one per line; blank lines and ``#`` comments skipped; duplicates are errors."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{OWNER}: class list {path} not found; pass classes=<file with one class name per line>") from None
    except (IsADirectoryError, UnicodeDecodeError) as exc:
        raise UserError(f"{OWNER}: class list {path} is not a UTF-8 text file ({type(exc).__name__})") from None
    names: list[str] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        name = line.split("#", 1)[0].strip()
        if not name:
            continue
        key = normalise(name)
        if key in seen:
            raise UserError(f"{path}:{lineno}: class {name!r} is listed twice (first on line {seen[key]}); "
                            "list each class once")
        seen[key] = lineno
        names.append(name)
    if not names:
        raise UserError(f"{path}: the class list is empty; put one class name per line")
    return tuple(names)


def read_clip_csv(path: Path, classes: tuple[str, ...], classes_source: str) -> list[tuple[str, Path, int, int]]:
    """Rows ``(id, clip path, class index, line)`` of a ``path,label`` manifest; UserError with file:line."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); expected a CSV 'path,label'") from None
    index = {normalise(c): i for i, c in enumerate(classes)}
    rows: list[tuple[str, Path, int, int]] = []
    first_line: dict[str, int] = {}
    header = False
    reader = csv.reader(text.splitlines(), skipinitialspace=True, strict=True)
    lineno = 0
    try:
        for row in reader:
            lineno = reader.line_num  # the csv module's count: right even for a quoted multi-line field
            if not row or all(not c.strip() for c in row) or row[0].lstrip().startswith("#"):
                continue
            if not header:
                if [c.strip().lower() for c in row] != ["path", "label"]:
                    raise UserError(f"{path}:{lineno}: expected the header 'path,label', got {','.join(row)!r}; "
                                    "a Kinetics-Sounds manifest lists one clip per row as path,label")
                header = True
                continue
            if len(row) != 2:
                raise UserError(f"{path}:{lineno}: expected 2 fields 'path,label' (quote a path or label that contains "
                                f"a comma), got {len(row)}: {row!r}")
            clip, label = row[0].strip(), row[1].strip()
            if not clip:
                raise UserError(f"{path}:{lineno}: empty clip path; fix or remove the row")
            key = normalise(label)
            if key not in index:
                close = difflib.get_close_matches(key, list(index), n=1, cutoff=0.6)
                hint = f" -- did you mean {classes[index[close[0]]]!r}?" if close else ""
                raise UserError(f"{path}:{lineno}: label {label!r} is not a class of {classes_source}{hint}; fix the "
                                "label or pass classes=<your class list file>")
            p = Path(clip).expanduser()
            p = p if p.is_absolute() else path.parent / p
            sid = p.stem
            if sid in first_line:
                raise UserError(f"{path}:{lineno}: clip id {sid!r} (the file stem) is already used on line "
                                f"{first_line[sid]}; each clip must appear once per split with a unique file name")
            first_line[sid] = lineno
            rows.append((sid, p, index[key], lineno))
    except csv.Error as exc:
        raise UserError(f"{path}:{reader.line_num}: cannot parse the CSV ({exc}); expected rows path,label") from None
    if not header:
        raise UserError(f"{path}: the file is empty; expected the header 'path,label' and one row per clip")
    return rows


def build_kinetics_sounds(
    root: str | None = None,
    splits: dict | None = None,
    classes: str | None = None,
    audio: str = "logmel64",
    stats: str | None = None,
    frontend_pipeline: str = "logmel64",
    clip_seconds: float = 10.0,
    video: str = "frames",
    frames: int = 10,
    image_size: int = 112,
    video_backbone: str = "resnet50",
    video_weights: str | None = None,
    video_bounds: list | None = None,
    video_device: str = "cpu",
    video_cache: bool = True,
    workers: int | None = None,
    missing: str = "skip",
    check: str = "header",
    min_duration: float | None = None,
):
    """The ``kinetics_sounds`` factory (keyword arguments = suite parameters; see the module docstring)."""
    return KineticsSounds(root, splits, classes, audio, stats, frontend_pipeline, clip_seconds, video, frames,
                          image_size, video_backbone, video_weights, video_bounds, video_device, missing, check,
                          video_cache, workers, min_duration)


class KineticsSounds(ClipDataset):
    name = NAME
    layout = "csv (path,label)"

    def __init__(self, root, splits, classes, audio, stats, frontend_pipeline, clip_seconds, video, frames,
                 image_size, video_backbone, video_weights, video_bounds, video_device, missing, check,
                 video_cache=True, workers=None, min_duration=None):
        if root is None or (isinstance(root, str) and not root.strip()):
            raise UserError(f"dataset {NAME!r} needs data.root: a folder holding the split manifests (train.csv, "
                            "val.csv, test.csv: header path,label, one clip per row); pass it with "
                            "--set data.root=/path/to/kinetics_sounds")
        if not isinstance(root, str):
            raise UserError(f"dataset {NAME!r}: root must be a folder path (a string), got {root!r}")
        base = Path(root).expanduser()
        if not base.is_dir():
            raise UserError(f"dataset {NAME!r}: data.root {base} does not exist or is not a folder; pass the folder "
                            "holding the split manifests with --set data.root=/path/to/kinetics_sounds")
        if splits is None:
            files = {s: base / f"{s}.csv" for s in DEFAULT_SPLIT_NAMES if (base / f"{s}.csv").is_file()}
            if not files:
                raise UserError(f"dataset {NAME!r}: {base} holds none of train.csv, val.csv, test.csv; add the "
                                "manifests (header path,label) or name them with splits: {test: my_test.csv}")
        else:
            if not isinstance(splits, dict) or not splits or not all(
                    isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in splits.items()):
                raise UserError(f"dataset {NAME!r}: splits must map split names to manifest CSVs under root "
                                f"(e.g. {{test: test.csv}}), got {splits!r}")
            files = {s: resolve(base, v) for s, v in splits.items()}
            for s, p in files.items():
                if not p.is_file():
                    raise UserError(f"dataset {NAME!r}: split {s!r} manifest {p} not found (splits.{s}); give a CSV "
                                    "with header path,label relative to root")
        classes_file = resolve(base, classes) if classes else bundled_classes_path()
        names = read_classes(classes_file)
        self.classes_source = str(classes_file) if classes else "the Kinetics-Sounds class list (34 classes)"
        audio_fe = AudioFrontEnd(OWNER, audio, stats, frontend_pipeline, clip_seconds, base)
        choice(OWNER, "video", video, ("frames", "features", "none"))
        source: VideoSource = VideoSource()
        if video == "frames":
            if video_bounds is not None:
                raise UserError(f"dataset {NAME!r}: video_bounds does not apply to video: frames (pixels are in [0, 1])")
            source = DecodedFrames(OWNER, frames, image_size)
        elif video == "features":
            positive(OWNER, "frames", frames, integer=True)
            source = DecodedEmbedded(OWNER, frames, video_backbone,
                                     str(resolve(base, video_weights)) if video_weights else None, video_device,
                                     video_bounds, cache=video_cache)
        elif video_bounds is not None:
            raise UserError(f"dataset {NAME!r}: video_bounds given but video is 'none'; remove it or set video")
        self._setup(root=base, task=Task("multiclass", names), split_files=files, audio_fe=audio_fe, video=source,
                    missing=missing, check=check, classes_file=classes_file, workers=default_workers(workers),
                    min_duration=min_duration)

    def _candidates(self, split: str):
        rows = read_clip_csv(self.split_files[split], self.task.classes, self.classes_source)
        video = self.video.needs_file
        return [Candidate(sid, label, p, p if video else None) for sid, p, label, _ in rows], {}

    def info(self) -> dict:
        d = super().info()
        d["classes"]["names"] = list(self.task.classes)
        d["files"] = {"classes": str(self.classes_file), "splits": {s: str(p) for s, p in self.split_files.items()}}
        return d


def register_datasets(register):
    register(NAME, build_kinetics_sounds)
