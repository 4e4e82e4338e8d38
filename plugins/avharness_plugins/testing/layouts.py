"""Small but real-format AudioSet and Kinetics-Sounds folders, generated for tests, benchmarks and demos.

Every writer produces the files a user would have, in the formats the loaders read, so a test
exercises the real parsing and decoding paths:

- :func:`write_audioset_csv_layout`: ``class_labels_indices.csv`` (a few real AudioSet classes),
  a segment CSV with the official three ``#`` header lines and quoted label lists, ``wav/<YTID>.wav``
  (16 kHz, 16-bit PCM), optionally ``video_features/<YTID>.npy`` [seconds, dim] and
  ``video/<YTID>.mp4`` clips with an H.264 video stream and an AAC audio stream (written by PyAV).
- :func:`write_audioset_json_layout`: the same clips listed by an AST json manifest whose paths sit
  under a fake cluster prefix (to exercise ``remap``).
- :func:`write_audioset_hdf5`: the seed's HDF5 layout (``feat_a`` [N, T, F] float32, optional
  ``feat_v``, ``labels`` [N, C], ``ids``), written chunk by chunk so a large file never sits in memory.
- :func:`write_kinetics_sounds_layout`: mp4 clips (audio + video) in per-class folders and one
  ``<split>.csv`` manifest (``path,label``) per split.

Clips carry their labels: each class has its own tone (a few harmonics, amplitude-modulated at a
class-specific rate) and colour, mixed with noise, so a model can learn them. Everything is
deterministic given ``seed`` (numpy generators seeded by (seed, purpose, index)).
"""

from __future__ import annotations

import fractions
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
#: real AudioSet classes (mid, display name), from class_labels_indices.csv
AUDIOSET_CLASSES = (
    ("/m/09x0r", "Speech"),
    ("/m/05zppz", "Male speech, man speaking"),
    ("/m/0bt9lr", "Dog"),
    ("/m/015p6", "Bird"),
    ("/m/04rlf", "Music"),
    ("/m/0342h", "Guitar"),
    ("/m/03kmc9", "Siren"),
    ("/m/03l9g", "Hammer"),
)
_YTID_ALPHABET = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))
_PURPOSES = {"plan": 1, "audio": 2, "video": 3, "features": 4, "hdf5": 5}


def _rng(seed: int, purpose: str, *index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), _PURPOSES[purpose], *map(int, index)])


# ------------------------------------------------------------------------------------ content


def class_tone(classes: Sequence[int], seconds: float, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE,
               noise: float = 0.05) -> np.ndarray:
    """float32 waveform: for each class k a tone at 250 * 1.6**k Hz (plus two harmonics) modulated at
    (1 + k) Hz, summed, with white noise; peak at most 0.9."""
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    x = np.zeros_like(t)
    for k in classes:
        f = 250.0 * 1.6 ** k
        phase = rng.uniform(0, 2 * np.pi)
        tone = sum(np.sin(2 * np.pi * f * h * t + phase) / h for h in (1, 2, 3) if f * h < sample_rate / 2)
        x += tone * (0.6 + 0.4 * np.sin(2 * np.pi * (1 + k) * t))
    x = x / max(1, len(classes)) * 0.3 + noise * rng.standard_normal(t.shape)
    peak = np.abs(x).max()
    if peak > 0.9:
        x *= 0.9 / peak
    return x.astype(np.float32)


def class_frames(classes: Sequence[int], seconds: float, fps: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 RGB frames [seconds * fps, size, size, 3]: the first class's colour, a bar whose position
    follows the second class (if any), and noise."""
    n = max(1, int(round(seconds * fps)))
    palette = np.array([[220, 40, 40], [40, 200, 40], [40, 40, 220], [220, 200, 40], [200, 40, 200],
                        [40, 200, 200], [240, 140, 20], [120, 120, 120]], dtype=np.float64)
    base = palette[classes[0] % len(palette)]
    frames = np.empty((n, size, size, 3), dtype=np.float64)
    frames[:] = base
    if len(classes) > 1:
        row = (classes[1] * size // 8) % size
        frames[:, row:row + max(1, size // 8)] = 255 - base
    frames += rng.normal(0, 12, frames.shape)
    return np.clip(frames, 0, 255).astype(np.uint8)


def class_features(classes: Sequence[int], seconds: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """float32 [seconds, dim] >= 0 (like post-ReLU pool5 features): noise plus a bump on each class's block."""
    x = np.abs(rng.normal(0, 0.3, (seconds, dim)))
    block = max(1, dim // 16)
    for k in classes:
        x[:, (k * block) % dim:(k * block) % dim + block] += 1.0
    return x.astype(np.float32)


def ytids(n: int, seed: int) -> list[str]:
    """``n`` distinct YouTube-like ids (11 characters of [A-Za-z0-9_-])."""
    rng = _rng(seed, "plan", 0)
    out: list[str] = []
    seen = set()
    while len(out) < n:
        s = "".join(rng.choice(_YTID_ALPHABET, 11))
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def _plan(n: int, n_classes: int, seed: int, extra_label: float = 0.3) -> list[tuple[str, tuple[int, ...]]]:
    """(YTID, class indices) per clip: the first class cycles through all classes (balanced), a second
    one is added with probability ``extra_label``."""
    rng = _rng(seed, "plan", 1)
    out = []
    for i, ytid in enumerate(ytids(n, seed)):
        first = i % n_classes
        classes = [first]
        if n_classes > 1 and rng.uniform() < extra_label:
            classes.append(int((first + rng.integers(1, n_classes)) % n_classes))
        out.append((ytid, tuple(classes)))
    return out


# ------------------------------------------------------------------------------------ writers


def write_wav(path: Path, wav: np.ndarray, sample_rate: int = SAMPLE_RATE, subtype: str = "PCM_16") -> None:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wav, sample_rate, subtype=subtype)


def write_mp4(path: Path, wav: np.ndarray | None, frames: np.ndarray | None, fps: int = 4,
              sample_rate: int = SAMPLE_RATE) -> None:
    """An mp4 with an H.264 video stream (``frames`` uint8 [T, H, W, 3], even H and W) and/or an AAC
    audio stream (mono float32 ``wav``), written with PyAV."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        vstream = astream = None
        if frames is not None:
            codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
            vstream = out.add_stream(codec, rate=fps)
            vstream.height, vstream.width = frames.shape[1:3]
            vstream.pix_fmt = "yuv420p"
            if codec == "libx264":
                vstream.options = {"preset": "ultrafast"}
        if wav is not None:
            astream = out.add_stream("aac", rate=sample_rate)
            astream.layout = "mono"
        if vstream is not None:
            for img in frames:
                for packet in vstream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    out.mux(packet)
            for packet in vstream.encode():
                out.mux(packet)
        if astream is not None:
            step = 1024
            for start in range(0, len(wav), step):
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(wav[None, start:start + step]),
                                                   format="fltp", layout="mono")
                frame.sample_rate = sample_rate
                frame.pts = start
                frame.time_base = fractions.Fraction(1, sample_rate)
                for packet in astream.encode(frame):
                    out.mux(packet)
            for packet in astream.encode():
                out.mux(packet)


def write_class_labels(path: Path, n_classes: int) -> list[tuple[str, str]]:
    """``class_labels_indices.csv`` with the first ``n_classes`` of :data:`AUDIOSET_CLASSES`; beyond
    those (e.g. 527 rows to match an HDF5 ``labels`` width) placeholder classes ``/t/synthetic<i>``."""
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    classes = list(AUDIOSET_CLASSES[:n_classes])
    classes += [(f"/t/synthetic{i}", f"Synthetic class {i}") for i in range(len(classes), n_classes)]
    lines = ["index,mid,display_name"] + [f'{i},{mid},"{name}"' for i, (mid, name) in enumerate(classes)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return classes


def _write_clips(root: Path, plan, classes, *, seconds: float, seed: int, video_features: bool, feature_dim: int,
                 video_seconds: int, mp4: bool, mp4_fps: int, mp4_size: int) -> dict:
    written = {"wav": {}, "npy": {}, "mp4": {}}
    for i, (ytid, cls) in enumerate(plan):
        wav = class_tone(cls, seconds, _rng(seed, "audio", i))
        p = root / "wav" / f"{ytid}.wav"
        write_wav(p, wav)
        written["wav"][ytid] = p
        if video_features:
            p = root / "video_features" / f"{ytid}.npy"
            p.parent.mkdir(parents=True, exist_ok=True)
            np.save(p, class_features(cls, video_seconds, feature_dim, _rng(seed, "features", i)))
            written["npy"][ytid] = p
        if mp4:
            p = root / "video" / f"{ytid}.mp4"
            write_mp4(p, wav, class_frames(cls, seconds, mp4_fps, mp4_size, _rng(seed, "video", i)), fps=mp4_fps)
            written["mp4"][ytid] = p
    return written


def write_audioset_csv_layout(root, n: int, *, n_classes: int = 4, seconds: float = 1.0, seed: int = 0,
                              split_file: str = "eval_segments.csv", missing: int = 0, video_features: bool = False,
                              feature_dim: int = 2048, video_seconds: int = 10, mp4: bool = False, mp4_fps: int = 4,
                              mp4_size: int = 32) -> dict:
    """An AudioSet folder in the official CSV layout with ``n`` clips (see the module docstring).

    ``missing`` extra segments are listed in the CSV with no clip written. Returns what was written:
    ``ids`` (listed order), ``labels`` {YTID: [mid, ...]}, ``classes`` [(mid, name)], ``missing``
    [YTID], ``paths`` {"wav"|"npy"|"mp4": {YTID: Path}}, ``csv`` (the segment file).
    """
    root = Path(root)
    classes = write_class_labels(root / "class_labels_indices.csv", n_classes)
    plan = _plan(n + missing, n_classes, seed)
    present, absent = plan[:n], plan[n:]
    rng = _rng(seed, "plan", 2)
    starts = rng.integers(0, 30, len(plan)) * 1.0
    rows = []
    for (ytid, cls), start in zip(plan, starts):
        mids = ",".join(classes[k][0] for k in cls)
        rows.append(f'{ytid}, {start:.3f}, {start + 10:.3f}, "{mids}"')
    n_pos = sum(len(c) for _, c in plan)
    header = ["# Segments csv created Sun Mar  5 10:54:25 2017",
              f"# num_ytids={len(plan)}, num_segs={len(plan)}, num_unique_labels={n_classes}, num_positive_labels={n_pos}",
              "# YTID, start_seconds, end_seconds, positive_labels"]
    # listed order interleaves the missing segments, as a real partial download would
    order = np.argsort(_rng(seed, "plan", 3).uniform(size=len(plan)), kind="stable") if missing else np.arange(len(plan))
    (root / split_file).write_text("\n".join(header + [rows[i] for i in order]) + "\n")
    written = _write_clips(root, present, classes, seconds=seconds, seed=seed, video_features=video_features,
                           feature_dim=feature_dim, video_seconds=video_seconds, mp4=mp4, mp4_fps=mp4_fps,
                           mp4_size=mp4_size)
    return {
        "ids": [plan[i][0] for i in order],
        "labels": {ytid: [classes[k][0] for k in cls] for ytid, cls in plan},
        "classes": classes,
        "missing": [ytid for ytid, _ in absent],
        "paths": written,
        "csv": root / split_file,
    }


def write_audioset_json_layout(root, n: int, *, n_classes: int = 4, seconds: float = 1.0, seed: int = 0,
                               manifest: str = "audioset_eval_data.json",
                               prefix: str = "/local/slurm-0000/local/audio/eval_wav/", missing: int = 0,
                               video_features: bool = False, feature_dim: int = 2048, video_seconds: int = 10) -> dict:
    """An AST-style json manifest listing ``n`` clips (plus ``missing`` absent ones) under the fake
    absolute ``prefix``; the clips themselves are in ``root/wav``. Returns as the CSV writer, plus
    ``remap`` ({prefix: root/wav/}) and ``json`` (the manifest path)."""
    root = Path(root)
    classes = write_class_labels(root / "class_labels_indices.csv", n_classes)
    plan = _plan(n + missing, n_classes, seed)
    data = [{"wav": f"{prefix}{ytid}.wav", "labels": ",".join(classes[k][0] for k in cls)} for ytid, cls in plan]
    (root / manifest).write_text(json.dumps({"data": data}, indent=1) + "\n")
    written = _write_clips(root, plan[:n], classes, seconds=seconds, seed=seed, video_features=video_features,
                           feature_dim=feature_dim, video_seconds=video_seconds, mp4=False, mp4_fps=4, mp4_size=32)
    return {
        "ids": [ytid for ytid, _ in plan],
        "labels": {ytid: [classes[k][0] for k in cls] for ytid, cls in plan},
        "classes": classes,
        "missing": [ytid for ytid, _ in plan[n:]],
        "paths": written,
        "json": root / manifest,
        "remap": {prefix: str(root / "wav") + "/"},
    }


def write_audioset_hdf5(path, n: int, *, n_frames: int = 400, n_bins: int = 64, video: bool = False,
                        video_shape: tuple[int, int] = (10, 2048), n_classes: int = 527, group: str = "eval/data",
                        ids: bool = True, chunk: int = 256, seed: int = 0) -> dict:
    """The seed's HDF5 layout with ``n`` clips, written ``chunk`` rows at a time (memory stays at one
    chunk whatever ``n``). ``feat_a`` is z-score-like noise with a class-dependent offset on a band of
    bins; ``labels`` has 1-2 positives per clip. Datasets are contiguous (as the seed's files). The
    contents are deterministic given ``seed`` and ``chunk`` (each chunk draws from its own generator).
    Returns ``{"path", "group", "n", "id_pattern"}``: clip i is named ``id_pattern.format(i)``
    (``clip000000``, ...), or ``<split>/<index>`` by the loader when ``ids`` is False."""
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        g = f.require_group(group) if group not in ("", "/") else f
        fa = g.create_dataset("feat_a", (n, n_frames, n_bins), dtype="float32")
        fv = g.create_dataset("feat_v", (n, *video_shape), dtype="float32") if video else None
        lab = g.create_dataset("labels", (n, n_classes), dtype="float32")
        dsid = g.create_dataset("ids", (n,), dtype=h5py.string_dtype()) if ids else None
        band = max(1, n_bins // 8)
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            m = stop - start
            rng = _rng(seed, "hdf5", start)
            first = rng.integers(0, n_classes, m)
            second = np.where(rng.uniform(size=m) < 0.3, rng.integers(0, n_classes, m), -1)
            y = np.zeros((m, n_classes), dtype=np.float32)
            y[np.arange(m), first] = 1.0
            y[np.arange(m)[second >= 0], second[second >= 0]] = 1.0
            a = rng.standard_normal((m, n_frames, n_bins), dtype=np.float32)
            for row, k in enumerate(first):
                lo = (k * band) % n_bins
                a[row, :, lo:lo + band] += 1.5
            fa[start:stop] = a
            lab[start:stop] = y
            if fv is not None:
                v = np.abs(rng.standard_normal((m, *video_shape), dtype=np.float32))
                fv[start:stop] = v
            if dsid is not None:
                dsid[start:stop] = [f"clip{i:06d}" for i in range(start, stop)]
    # the ids follow a pattern rather than being returned: a list of N strings is what this writer avoids
    return {"path": path, "group": group, "n": n, "id_pattern": "clip{:06d}" if ids else None}


def write_kinetics_sounds_layout(root, n: int, *, classes: Sequence[str] | None = None, n_classes: int = 4,
                                 splits: Sequence[str] = ("test",), seconds: float = 2.0, fps: int = 4, size: int = 32,
                                 seed: int = 0, missing: int = 0) -> dict:
    """Kinetics-Sounds-like clips: ``n`` mp4s (H.264 + AAC) per split in ``clips/<label_with_underscores>/``
    named ``<YTID>_000010_000020.mp4`` (as Kinetics downloads are), and ``<split>.csv`` with header
    ``path,label`` and paths relative to ``root``. ``classes`` default to the first ``n_classes`` of the
    bundled Kinetics-Sounds list. ``missing`` extra rows per split name clips that are not written.
    Returns ``{split: {"ids", "labels" {id: class index}, "paths" {id: Path}, "missing" [id], "csv"}}``
    and ``"classes"``.
    """
    root = Path(root)
    if classes is None:
        from avharness_plugins.datasets.kinetics_sounds import bundled_classes_path, read_classes

        classes = read_classes(bundled_classes_path())[:n_classes]
    classes = list(classes)
    out: dict = {"classes": classes}
    for s, split in enumerate(splits):
        split_seed = seed * 1000 + s
        plan = _plan(n + missing, len(classes), split_seed, extra_label=0.0)
        rows = ["path,label"]
        info = {"ids": [], "labels": {}, "paths": {}, "missing": [], "csv": root / f"{split}.csv"}
        for i, (ytid, cls) in enumerate(plan):
            label = classes[cls[0]]
            sid = f"{ytid}_000010_000020"
            rel = Path("clips") / label.replace(" ", "_") / f"{sid}.mp4"
            rows.append(f"{rel.as_posix()},{label}")
            info["ids"].append(sid)
            info["labels"][sid] = cls[0]
            info["paths"][sid] = root / rel
            if i >= n:
                info["missing"].append(sid)
                continue
            wav = class_tone(cls, seconds, _rng(split_seed, "audio", i))
            write_mp4(root / rel, wav, class_frames(cls, seconds, fps, size, _rng(split_seed, "video", i)), fps=fps)
        root.mkdir(parents=True, exist_ok=True)
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
        out[split] = info
    return out
