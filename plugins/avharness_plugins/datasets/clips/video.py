"""The clip datasets' video sources: none (:class:`VideoSource`), per-clip ``.npy`` features
(:class:`NpyFeatures`), frames decoded at 1 fps and embedded by the frozen backbone
(:class:`DecodedEmbedded`; embeddings cached in ``$AVHARNESS_CACHE/video_embeddings``) or the decoded
frames themselves (:class:`DecodedFrames`); and the check that a clip's video lies inside the
declared bounds."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from avharness import InputSpec, UserError, atomic_write_bytes
from avharness_plugins.datasets.avdigits.dataset import default_cache_dir
from avharness_plugins.datasets.clips import decode as cl
from avharness_plugins.datasets.clips.params import INF, bounds_param, choice, positive
from avharness_plugins.datasets.clips.video_backbone import ARCHS, FrameEmbedder, check_arch, check_weights

#: bump when cached video embeddings (``$AVHARNESS_CACHE/video_embeddings``) change meaning
CACHE_VERSION = 1


class VideoSource:
    """No video (the base class): ``spec`` None."""

    kind = "none"
    spec: InputSpec | None = None
    needs_file = False

    def probe(self, path: Path, deep: bool) -> None:  # pragma: no cover - never called for "none"
        pass

    def load(self, path: Path) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def identity(self) -> dict:
        return {"kind": self.kind}

    def describe(self) -> dict:
        return {"source": "none"}


def _cut_or_repeat(x: torch.Tensor, n: int) -> torch.Tensor:
    """Cut [T, ...] to n steps or pad by repeating the last one (a short clip's last second)."""
    if x.shape[0] >= n:
        return x[:n]
    return torch.cat([x, x[-1:].expand(n - x.shape[0], *x.shape[1:])])


class NpyFeatures(VideoSource):
    """Per-clip ``<id>.npy`` arrays [T, D] (one row per second) in ``folder``; time cut or padded
    (repeating the last second) to ``seconds``; D read from the first file's header by name."""

    kind = "features"
    needs_file = True

    def __init__(self, owner: str, folder: Path, seconds: int, bounds):
        self.owner, self.folder, self.seconds = owner, folder, int(seconds)
        if not folder.is_dir():
            raise UserError(f"{owner}: video features folder {folder} does not exist; put one <id>.npy array "
                            "[seconds, dim] per clip there or set video_features to the folder holding them")
        first = None
        with os.scandir(folder) as it:
            for e in it:
                if e.name.endswith(".npy") and e.is_file() and (first is None or e.name < first):
                    first = e.name
        if first is None:
            raise UserError(f"{owner}: video features folder {folder} holds no .npy files; put one <id>.npy "
                            "array [seconds, dim] per clip there")
        try:
            shape = np.load(folder / first, mmap_mode="r").shape
        except Exception as exc:
            raise UserError(f"{owner}: cannot read {folder / first} ({cl._why(exc)}); the video features must be "
                            ".npy arrays [seconds, dim]") from None
        if len(shape) != 2:
            raise UserError(f"{owner}: {folder / first} has shape {list(shape)}; video features must be [seconds, dim]")
        self.dim = int(shape[1])
        self.bounds = bounds_param(owner, "video_bounds", bounds, (0.0, INF))
        self.spec = InputSpec((self.seconds, self.dim), self.bounds, "video features (per second)")
        self.first = first

    def locate(self, ids: Sequence[str]) -> dict[str, Path]:
        return {i: self.folder / f"{i}.npy" for i in ids}

    def probe(self, path: Path, deep: bool) -> None:
        try:
            arr = np.load(path, mmap_mode="r")
        except Exception as exc:
            raise cl.ClipError(f"unreadable .npy ({cl._why(exc)})") from None
        if arr.ndim != 2 or arr.shape[1] != self.dim or arr.shape[0] == 0:
            raise cl.ClipError(f"shape {list(arr.shape)}, expected [seconds, {self.dim}]")
        if deep:
            self.load(path)

    def load(self, path: Path) -> torch.Tensor:
        try:
            arr = np.load(path)
        except Exception as exc:
            raise cl.ClipError(f"unreadable .npy ({cl._why(exc)})") from None
        if arr.ndim != 2 or arr.shape[1] != self.dim or arr.shape[0] == 0:
            raise cl.ClipError(f"shape {list(arr.shape)}, expected [seconds, {self.dim}]")
        x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        if not torch.isfinite(x).all():
            raise cl.ClipError("NaN or inf in the video features")
        return _cut_or_repeat(x, self.seconds)

    def identity(self) -> dict:
        return {"kind": self.kind, "seconds": self.seconds, "dim": self.dim, "bounds": list(self.bounds)}

    def describe(self) -> dict:
        return {"source": f"per-clip .npy features in {self.folder}", "shape": [self.seconds, self.dim],
                "time": f"cut to {self.seconds} rows or padded by repeating the last row",
                "bounds": self.spec.to_dict()["bounds"],
                "bounds_note": "[0, inf) assumes post-ReLU features; set video_bounds otherwise"}


class DecodedEmbedded(VideoSource):
    """Frames decoded at 1 fps with PyAV and embedded by a frozen ResNet -> [seconds, D] >= 0."""

    kind = "decode"
    needs_file = True

    def __init__(self, owner: str, seconds: int, arch: str, weights, device: str, bounds, cache: bool = True):
        check_arch(arch, owner)
        check_weights(weights, arch, owner)
        self.seconds = int(seconds)
        # Embedding a clip's frames costs a ResNet pass per second of video, and every cell of a suite
        # reads every clip again: embeddings are kept on disk, keyed by what determines them (the
        # weights' bytes, the backbone, the clip file's path, size and mtime).
        self.cache_dir = (default_cache_dir() / "video_embeddings") if cache else None
        device = choice(owner, "video_device", device, ("cpu", "cuda", "auto"))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.embedder = FrameEmbedder(arch, weights, device=device, owner=owner)
        self.bounds = bounds_param(owner, "video_bounds", bounds, (0.0, INF))
        self.spec = InputSpec((self.seconds, ARCHS[arch]), self.bounds, f"video features ({arch}, per second)")

    def probe(self, path: Path, deep: bool) -> None:
        cl.probe(path, audio=False, video=True)
        if deep:
            cl.decode_frames(path, self.seconds)

    def decode(self, path: Path) -> torch.Tensor:
        return cl.decode_frames(path, self.seconds)

    def embed(self, frames: list[torch.Tensor]) -> list[torch.Tensor]:
        """One backbone pass over the frames of several clips (fewer, fuller forward calls)."""
        out = self.embedder.embed(torch.cat(frames)) if frames else torch.empty(0, self.embedder.dim)
        return list(out.split([f.shape[0] for f in frames]))

    def load(self, path: Path) -> torch.Tensor:
        return self.embed([self.decode(path)])[0]

    def cache_file(self, path: Path) -> Path | None:
        if self.cache_dir is None:
            return None
        st = path.stat()
        key = hashlib.sha256(json.dumps([CACHE_VERSION, self.embedder.sha256(), self.embedder.arch, self.seconds,
                                         str(path.resolve()), st.st_size, st.st_mtime_ns]).encode()).hexdigest()
        return self.cache_dir / key[:2] / f"{key[2:34]}.npy"

    def cached(self, path: Path) -> torch.Tensor | None:
        f = self.cache_file(path)
        if f is None or not f.exists():
            return None
        try:
            x = torch.from_numpy(np.load(f, allow_pickle=False))
        except (OSError, ValueError):  # a damaged cache entry is recomputed, never trusted
            return None
        return x if tuple(x.shape) == tuple(self.spec.shape) else None

    def store(self, path: Path, x: torch.Tensor) -> None:
        f = self.cache_file(path)
        if f is None:
            return
        buf = io.BytesIO()
        np.save(buf, x.numpy(), allow_pickle=False)
        try:
            atomic_write_bytes(f, buf.getvalue())
        except OSError:  # a read-only cache only costs speed
            pass

    def identity(self) -> dict:
        return {"kind": self.kind, "seconds": self.seconds, **self.embedder.identity(), "bounds": list(self.bounds)}

    def describe(self) -> dict:
        return {"source": "frames decoded with PyAV at 1 fps (frame nearest each second's centre), embedded "
                          "by a frozen backbone", "shape": list(self.spec.shape), **self.embedder.describe(),
                "bounds": self.spec.to_dict()["bounds"],
                "cache": str(self.cache_dir) if self.cache_dir else None}


class DecodedFrames(VideoSource):
    """Frames decoded at 1 fps, resized (shorter side) and centre-cropped: [T, 3, S, S] in [0, 1]."""

    kind = "frames"
    needs_file = True

    def __init__(self, owner: str, frames: int, image_size: int):
        self.frames = int(positive(owner, "frames", frames, integer=True))
        self.size = int(positive(owner, "image_size", image_size, integer=True))
        self.bounds = (0.0, 1.0)
        self.spec = InputSpec((self.frames, 3, self.size, self.size), self.bounds, "pixel (RGB, [0, 1])")

    def probe(self, path: Path, deep: bool) -> None:
        cl.probe(path, audio=False, video=True)
        if deep:
            cl.decode_frames(path, self.frames)

    def load(self, path: Path) -> torch.Tensor:
        return cl.resize_center_crop(cl.decode_frames(path, self.frames), self.size)

    def identity(self) -> dict:
        return {"kind": self.kind, "frames": self.frames, "size": self.size}

    def describe(self) -> dict:
        return {"source": "frames decoded with PyAV at 1 fps (frame nearest each second's centre)",
                "shape": list(self.spec.shape), "resize": f"shorter side to {self.size} (bilinear, antialias), "
                "centre crop", "bounds": [0.0, 1.0]}


def check_video_bounds(owner: str, sample_id: str, x: torch.Tensor, bounds) -> None:
    lo, hi = bounds
    if (math.isfinite(lo) and float(x.min()) < lo) or (math.isfinite(hi) and float(x.max()) > hi):
        raise UserError(f"{owner}: video features of clip {sample_id} range over [{float(x.min()):.4g}, "
                        f"{float(x.max()):.4g}], outside the declared bounds [{lo:g}, {hi:g}]; set video_bounds "
                        "to the features' valid range")
