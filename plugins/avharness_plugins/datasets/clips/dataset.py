"""The clip loader the clip-file datasets share (``audioset``'s csv/json layouts, ``kinetics_sounds``).

A subclass lists a split's candidate samples (id, target, audio file, video file); this module
turns that list into a fixed sample set, streams it in batches, hashes it and describes it.
The parameter checks live in ``params``, the audio front end in ``audio``, the video sources in
``video``.

**Missing and unreadable clips.** A split is *indexed* once per dataset object, on the first call
that needs it (``size``, ``batches``, ``manifest``, ``info``): every candidate whose audio (or
requested video) file is absent, or whose file fails the ``check``, is set aside with its reason.
``check`` decides how hard to look: ``"exists"`` (a stat), ``"header"`` (default: also read each
file's header -- soundfile's parse, or PyAV opening the container and finding the streams; well
under a millisecond per wav) or ``"decode"`` (decode every clip once, up front; slow, and it finds
files whose header is fine but whose data is corrupt). ``header`` and ``decode`` also measure the
audio's length: a clip with less than ``min_duration`` × ``clip_seconds`` of audio (default 0.1: a
file cut short, e.g. right after its header) counts as unreadable. The index is cached, so the sample set of a
split never changes between calls. ``missing: skip`` evaluates without the set-aside clips and
lists them (id and reason) in ``info()`` -- which the report records; ``missing: error`` makes any
of them a UserError listing the first few and the count. A clip that passed the check but then
fails to decode inside ``batches`` is an error naming it (dropping it there would change the sample
set mid-run); rerun with ``check: decode`` to find and list all such clips up front.

**Streaming.** ``batches`` decodes only the clips of the batch it is building, so memory does not
grow with the split (the index holds a few hundred bytes of paths per clip).

**Manifest.** A sha256 over the split file's bytes, the class list's bytes, the feature settings
(pipeline name, version and normalisation statistics; video source and backbone weights' size and
mtime), each kept sample's id, target and its files' name, size and mtime_ns, and the set-aside
ids with their reasons. Hashing 20k clips' bytes on every run would dominate a run's start-up;
(size, mtime_ns) changes whenever a file is rewritten, and a copy that loses mtimes only gives a
new manifest (a recomputation, never a wrong reuse).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from avharness import Batch, Task, UserError
from avharness.weights import file_sha256
from avharness_plugins.datasets.clips import decode as cl
from avharness_plugins.datasets.clips.audio import AudioFrontEnd
from avharness_plugins.datasets.clips.params import CHECKS, MISSING_POLICIES, choice, min_duration_param, positive
from avharness_plugins.datasets.clips.video import DecodedEmbedded, VideoSource, check_video_bounds

FORMAT_VERSION = 1


# ------------------------------------------------------------------------------------- index


@dataclass(frozen=True)
class Candidate:
    """One listed sample before checking its files. ``target``: class indices (multilabel) or one index."""

    id: str
    target: tuple[int, ...] | int
    audio: Path | None
    video: Path | None = None
    reason: str | None = None  # known already to be missing (e.g. no clip file matches the YTID)


@dataclass(frozen=True)
class Sample:
    id: str
    target: tuple[int, ...] | int
    audio: Path
    video: Path | None
    stamp: str  # "name:size:mtime_ns" of each file, for the manifest


@dataclass
class SplitIndex:
    samples: list[Sample]
    missing: list[tuple[str, str]]
    listed: int
    source: Path
    source_sha256: str
    notes: dict = field(default_factory=dict)


def _stamp(p: Path) -> str:
    st = p.stat()
    return f"{p.name}:{st.st_size}:{st.st_mtime_ns}"


class ClipDataset:
    """Base of the clip-file datasets. Subclasses set ``name``, ``task``, ``split_files`` and the
    front ends, and implement ``_candidates(split) -> (list[Candidate], notes)``."""

    name = "clips"
    layout = "clips"

    @property
    def owner(self) -> str:
        return f"dataset {self.name!r}"

    def _setup(self, *, root: Path, task: Task, split_files: dict[str, Path], audio_fe: AudioFrontEnd,
               video: VideoSource, missing: str, check: str, classes_file: Path | None, workers: int = 1,
               min_duration: float | None = None) -> None:
        self.root = root
        self.task = task
        self.split_files = split_files
        self.audio_fe = audio_fe
        self.video = video
        self.missing_policy = choice(self.owner, "missing", missing, MISSING_POLICIES)
        self.check = choice(self.owner, "check", check, CHECKS)
        self.min_duration = min_duration_param(self.owner, min_duration)
        self.min_seconds = self.min_duration * audio_fe.clip_seconds
        self.classes_file = classes_file
        self.specs = {"audio": audio_fe.spec}
        if video.spec is not None:
            self.specs["video"] = video.spec
        self._index: dict[str, SplitIndex] = {}
        self._manifests: dict[str, str] = {}
        self._lock = threading.RLock()
        self._pool = None
        self.workers = positive(self.owner, "workers", workers, integer=True)

    def __getstate__(self):  # picklable (e.g. for loader workers): the lock and thread pool are recreated
        state = dict(self.__dict__)
        state.pop("_lock", None)
        state.pop("_pool", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.RLock()

    # ---------------------------------------------------------------- the Dataset contract

    def splits(self) -> tuple[str, ...]:
        return tuple(self.split_files)

    def size(self, split: str) -> int:
        return len(self.index(split).samples)

    def batches(self, split: str, batch_size: int, *, shuffle: torch.Generator | None = None,
                limit: int | None = None) -> Iterator[Batch]:
        samples = self.index(split).samples
        n = _count(self.owner, len(samples), batch_size, limit)
        # limit keeps the first n of the fixed order; shuffle only reorders those
        order = range(n) if shuffle is None else torch.randperm(n, generator=shuffle).tolist()
        order = list(order)
        chunks = [[samples[i] for i in order[start:start + batch_size]] for start in range(0, n, batch_size)]
        if self.workers <= 1 or len(chunks) < 2:
            for chunk in chunks:
                yield self._batch(chunk)
            return
        # The next batch is decoded while the caller attacks this one: at most two batches are held,
        # so memory stays flat in N, and on a GPU the attack no longer waits for the disk.
        with ThreadPoolExecutor(1, thread_name_prefix="avharness-prefetch") as ahead:
            pending = ahead.submit(self._batch, chunks[0])
            for chunk in chunks[1:]:
                batch = pending.result()
                pending = ahead.submit(self._batch, chunk)
                yield batch
            yield pending.result()

    def _map(self, fn, items: list) -> list:
        """``[fn(x) for x in items]`` on ``workers`` threads, in order (decoders release the GIL)."""
        if self.workers <= 1 or len(items) < 2:
            return [fn(x) for x in items]
        with self._lock:
            if getattr(self, "_pool", None) is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="avharness-decode")
        return list(self._pool.map(fn, items))

    def manifest(self, split: str) -> str:
        idx = self.index(split)
        with self._lock:
            if split not in self._manifests:
                h = hashlib.sha256()
                head = {"dataset": self.name, "format": FORMAT_VERSION, "layout": self.layout, "split": split,
                        "source_sha256": idx.source_sha256,
                        "classes_sha256": file_sha256(self.classes_file) if self.classes_file else None,
                        "classes": list(self.task.classes) if self.classes_file is None else None,
                        "audio": self.audio_fe.identity(), "video": self.video.identity(), "check": self.check}
                h.update(json.dumps(head, sort_keys=True).encode())
                for s in idx.samples:
                    target = ",".join(map(str, s.target)) if isinstance(s.target, tuple) else str(s.target)
                    h.update(f"\n{s.id}\t{target}\t{s.stamp}".encode())
                for sid, reason in idx.missing:
                    h.update(f"\nmissing\t{sid}\t{reason}".encode())
                self._manifests[split] = h.hexdigest()
        return self._manifests[split]

    def info(self) -> dict:
        splits = {}
        for split in self.splits():
            idx = self.index(split)
            splits[split] = {
                "file": str(idx.source),
                "listed": idx.listed,
                "usable": len(idx.samples),
                "missing": len(idx.missing),
                "missing_by_reason": dict(Counter(_reason_kind(r) for _, r in idx.missing).most_common()),
                "missing_items": [{"id": i, "reason": r} for i, r in idx.missing],
                **idx.notes,
            }
        return {
            "dataset": self.name,
            "format_version": FORMAT_VERSION,
            "layout": self.layout,
            "root": str(self.root),
            "classes": {"n": self.task.num_classes, "source": str(self.classes_file) if self.classes_file else None,
                        "kind": self.task.kind},
            "audio": self.audio_fe.describe(),
            "video": self.video.describe(),
            "missing_policy": self.missing_policy,
            "check": self.check,
            "min_duration": self.min_duration,
            "check_note": {
                "exists": "clips were only checked to exist; one that fails to decode stops the run with its name",
                "header": "each clip's header was read when the split was indexed; one whose data then fails to "
                          "decode stops the run with its name (use check: decode to find them all up front)",
                "decode": "every clip was decoded once when the split was indexed",
            }[self.check],
            "splits": splits,
            # one line per split with clips left out, for the head of report.md
            "notes": [f"split {sp}: {d['missing']} of {d['listed']} listed clips missing or unreadable ("
                      + ", ".join(f"{n} {k}" for k, n in d["missing_by_reason"].items())
                      + f"; {'skipped' if self.missing_policy == 'skip' else 'an error'}; listed in report.json "
                      f"under data.info.splits.{sp}.missing_items)" for sp, d in splits.items() if d["missing"]],
        }

    # ---------------------------------------------------------------- extras

    def feature_stats(self, split: str, limit: int | None = None, batch_size: int = 16) -> dict:
        """``features.compute_stats`` of the audio pipeline (without normalisation) over ``split``,
        streamed in the fixed order; the first ``limit`` clips only when given. Save the result with
        ``features.save_stats`` and pass its path as ``stats``."""
        from avharness_plugins.datasets import features
        samples = self.index(split).samples
        n = _count(self.owner, len(samples), batch_size, limit)
        pipeline = features.get_pipeline(self.audio_fe.pipeline_name)

        def waves():
            for start in range(0, n, batch_size):
                yield self._waveforms(samples[start:min(n, start + batch_size)])

        stats = features.compute_stats(pipeline, waves())
        stats["source"] = {"dataset": self.name, "split": split, "clips": n, "manifest_sha256": self.manifest(split)}
        return stats

    # ---------------------------------------------------------------- internals

    def check_split(self, split: str) -> str:
        if split not in self.split_files:
            raise UserError(f"dataset {self.name!r} has no split {split!r}; it has: {', '.join(self.split_files)} "
                            "(add one with the splits parameter)")
        return split

    def index(self, split: str) -> SplitIndex:
        self.check_split(split)
        with self._lock:
            if split not in self._index:
                self._index[split] = self._build_index(split)
        return self._index[split]

    def _build_index(self, split: str) -> SplitIndex:
        cands, notes = self._candidates(split)
        source = self.split_files[split]
        samples: list[Sample] = []
        missing: list[tuple[str, str]] = []
        deep = self.check == "decode"
        for c in cands:
            reason = c.reason or self._check(c, deep)
            if reason:
                missing.append((c.id, reason))
                continue
            stamp = _stamp(c.audio) + (f"|{_stamp(c.video)}" if c.video is not None else "")
            samples.append(Sample(c.id, c.target, c.audio, c.video, stamp))
        if missing and self.missing_policy == "error":
            raise UserError(f"{self.owner}: split {split!r} ({source}): {len(missing)} of {len(cands)} clips are missing "
                            f"or unreadable, e.g. {_first(missing)}; provide them, or set missing: skip to evaluate "
                            "without them (they are then listed in the report)")
        if not samples:
            raise UserError(f"{self.owner}: split {split!r} ({source}) has no usable clip: "
                            f"{'all ' + str(len(cands)) + ' listed are' if cands else 'it lists none'} missing or "
                            f"unreadable{', e.g. ' + _first(missing) if missing else ''}; check the clip folders and the "
                            "path parameters")
        return SplitIndex(samples, missing, len(cands), source, file_sha256(source), notes)

    def _check(self, c: Candidate, deep: bool) -> str | None:
        """None if the candidate's files pass ``check``, else the reason (one line)."""
        same = c.video is not None and c.video == c.audio  # one clip holds both streams (kinetics_sounds)
        pairs = [("clip" if same else "audio", c.audio)] + ([("video", c.video)] if self.video.needs_file and not same else [])
        for what, path in pairs:
            if path is None:
                return f"no {what} file"
            if not path.is_file():
                return f"no {what} file {path}"
        if self.check == "exists":
            return None
        try:
            if same:
                cl.probe(c.audio, audio=True, video=True, min_seconds=self.min_seconds)
            else:
                cl.probe(c.audio, audio=True, min_seconds=self.min_seconds)
        except cl.ClipError as exc:
            return f"unreadable {'clip' if same else 'audio'} {c.audio.name}: {exc}"
        if deep:
            try:
                cl.decode_audio(c.audio, self.audio_fe.clip_seconds)
            except cl.ClipError as exc:
                return f"unreadable audio {c.audio.name}: {exc}"
        if self.video.needs_file:
            try:
                if not same or deep:
                    self.video.probe(c.video, deep)
            except cl.ClipError as exc:
                return f"unreadable video {c.video.name}: {exc}"
        return None

    def _decode_error(self, s: Sample, what: str, path: Path, exc: Exception) -> UserError:
        return UserError(f"{self.owner}: clip {s.id}: {what} {path} could not be decoded ({exc}) although it passed "
                         f"check: {self.check} when the split was indexed; the sample set cannot change mid-run, so "
                         "rerun with check: decode (every clip decoded up front; bad ones are listed as missing) "
                         "or remove the file")

    def _waveforms(self, chunk: Sequence[Sample]) -> torch.Tensor:
        def one(s: Sample) -> torch.Tensor:
            try:
                return cl.decode_audio(s.audio, self.audio_fe.clip_seconds)
            except cl.ClipError as exc:
                raise self._decode_error(s, "audio", s.audio, exc) from None
        return torch.stack(self._map(one, list(chunk)))

    def _batch(self, chunk: Sequence[Sample]) -> Batch:
        inputs = {"audio": self.audio_fe(self._waveforms(chunk))}
        if self.video.spec is not None:
            batched = isinstance(self.video, DecodedEmbedded)
            vids: list = [self.video.cached(s.video) if batched else None for s in chunk]
            todo = [i for i, v in enumerate(vids) if v is None]

            def one(i: int) -> torch.Tensor:
                s = chunk[i]
                try:
                    return self.video.decode(s.video) if batched else self.video.load(s.video)
                except cl.ClipError as exc:
                    raise self._decode_error(s, "video", s.video, exc) from None
            for i, x in zip(todo, self._map(one, todo)):
                vids[i] = x
            if batched and todo:  # one backbone pass over the clips not in the cache
                for i, x in zip(todo, self.video.embed([vids[i] for i in todo])):
                    vids[i] = x
                    self.video.store(chunk[i].video, x)
            for s, x in zip(chunk, vids):
                check_video_bounds(self.owner, s.id, x, self.video.bounds)
            inputs["video"] = torch.stack(vids)
        if self.task.kind == "multilabel":
            target = torch.zeros(len(chunk), self.task.num_classes)
            for row, s in enumerate(chunk):
                target[row, list(s.target)] = 1.0
        else:
            target = torch.tensor([s.target for s in chunk], dtype=torch.long)
        return Batch(inputs, target, [s.id for s in chunk])

    def _candidates(self, split: str) -> tuple[list[Candidate], dict]:  # pragma: no cover - abstract
        raise NotImplementedError


def _count(owner: str, available: int, batch_size, limit) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"{owner}: batch_size must be a positive integer, got {batch_size!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise UserError(f"{owner}: limit must be a non-negative integer or None, got {limit!r}")
    return available if limit is None else min(limit, available)


def _first(missing: list[tuple[str, str]], k: int = 3) -> str:
    return "; ".join(f"{i} ({r})" for i, r in missing[:k]) + (f"; ... ({len(missing) - k} more)" if len(missing) > k else "")


def _reason_kind(reason: str) -> str:
    """Group reasons for the summary: the text before the file name / detail."""
    for prefix in ("no audio file", "no video file", "no clip file", "unreadable audio", "unreadable video",
                   "unreadable clip"):
        if reason.startswith(prefix):
            return prefix
    return reason.split(":")[0]
