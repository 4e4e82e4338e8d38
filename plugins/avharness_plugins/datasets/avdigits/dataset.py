"""Built-in datasets. ``avdigits``: spoken digits paired with short clips of handwritten digits.

Every sample is a pair (audio, video) of the same digit, 0-9:

- **video** ``[T, H, W]`` float32 in [0, 1] (``T`` grey frames, default 4 x 24 x 24): one of the
  1,797 real 8x8 scans of scikit-learn's ``load_digits`` (bundled, no download), upsampled by
  bilinear sampling, drawn with a random scale, rotation and position that drift a little from frame
  to frame, then degraded: lower contrast on a grey background, an occluding rectangle in some clips,
  per-pixel Gaussian noise.
- **audio** ``[T, F]`` (time frames x mel bins, default 51 x 32): the digit's English word spoken
  by eSpeak NG (several accents, voice variants, speaking rates and pitches), resampled to 16 kHz,
  placed at a random offset in a 1 s window, mixed with coloured noise at a random SNR, turned into
  a log-mel spectrogram (10 log10 of mel power), z-scored per mel bin with statistics of the
  *train* split, and clipped to [-4, 4], so the valid range is known before any data exists.

The test images are scans the training split never sees (the 1,797 scans are split per class
before pairing); a scan is reused within its split with other audio and other augmentations.
Splits are stratified: each holds the same number of samples of every digit (up to rounding).

Data are built on first use (about 4 s for the default 3,000 pairs on two cores) and cached as
one ``.pt`` file (~47 MB) under ``cache_dir`` (default ``$AVHARNESS_CACHE``, else
``~/.cache/avharness``), named by a hash of every knob, the format version and the generators'
versions; the file is written to a temporary name and moved into place, so concurrent builders
never see half a file. The same knobs and seed give bit-identical tensors, with or without the
cache, whatever the number of threads (eSpeak NG's randomness is seeded per utterance, and the
normalisation statistics use single-threaded reductions).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import threading
import time
import warnings
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from avharness import Batch, InputSpec, Task, UserError, atomic_write_bytes, derive_seed, generator
from avharness.numerics import training_threads

#: bump when the generated data change for the same knobs (invalidates caches)
FORMAT_VERSION = 1
CLASSES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPLITS = ("train", "val", "test")
FRACTIONS = (0.60, 0.15, 0.25)

# Audio features. Fixed (not knobs) so that a spec shape is a constant of the dataset's version.
SAMPLE_RATE = 16_000
WINDOW_SAMPLES = SAMPLE_RATE  # a 1 s window
N_FFT, WIN_LENGTH, HOP_LENGTH, N_MELS = 512, 400, 320, 32
F_MIN, F_MAX = 20.0, 8000.0
LOG_FLOOR = 1e-10
AUDIO_FRAMES = 1 + WINDOW_SAMPLES // HOP_LENGTH  # center=True framing: 51
AUDIO_CLIP = 4.0  # z-scored features are clipped to [-AUDIO_CLIP, AUDIO_CLIP]
SPEECH_RMS = 0.1  # speech level before the random gain (full scale = 1)

_CHUNK = 256  # rows per feature-extraction chunk: fixed, so results never depend on memory


def default_cache_dir() -> Path:
    env = os.environ.get("AVHARNESS_CACHE", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "avharness"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


def split_sizes(n: int) -> dict[str, int]:
    n_train = int(round(n * FRACTIONS[0]))
    n_val = int(round(n * FRACTIONS[1]))
    return {"train": n_train, "val": n_val, "test": n - n_train - n_val}


class AVDigits:
    """The ``avdigits`` dataset (see the module docstring).

    Construction is cheap: nothing is built or read until the first call that needs the data
    (``batches``, ``manifest``, ``info``). ``n`` is the number of pairs over all splits (60/15/25 %);
    ``frames`` and ``image_size`` set the video shape. The other knobs set the difficulty, drawn
    per sample uniformly in their ranges: audio SNR in dB (``snr_db_min``..``snr_db_max``), level
    (+-``gain_db``), speaking rate in words/min (``rate_min``..``rate_max``); video scale of the digit
    in the frame (``scale_min``..``scale_max``), position (+-``max_shift`` of the frame) and rotation
    (+-``max_rotation`` degrees), contrast (``contrast_min``..1), the fraction of clips with an
    occluder (``occlusion``) and its largest side (``occluder_max`` of the frame), pixel-noise
    standard deviation (0..``pixel_noise``). The defaults are tuned so that the built-in CNNs,
    trained with ``standard`` defaults, reach 75-95 % clean test accuracy on either modality alone
    and fusing both modalities gains several points.
    """

    name = "avdigits"

    def __init__(
        self,
        seed: int = 0,
        cache_dir: str | None = None,
        n: int = 3000,
        frames: int = 4,
        image_size: int = 24,
        snr_db_min: float = -7.0,
        snr_db_max: float = 10.0,
        gain_db: float = 6.0,
        rate_min: int = 110,
        rate_max: int = 260,
        max_shift: float = 0.1,
        max_rotation: float = 12.0,
        scale_min: float = 0.7,
        scale_max: float = 0.95,
        contrast_min: float = 0.35,
        occlusion: float = 0.25,
        occluder_max: float = 0.6,
        pixel_noise: float = 0.2,
    ):
        knobs = dict(n=n, frames=frames, image_size=image_size, snr_db_min=snr_db_min, snr_db_max=snr_db_max,
                     gain_db=gain_db, rate_min=rate_min, rate_max=rate_max, max_shift=max_shift,
                     max_rotation=max_rotation, scale_min=scale_min, scale_max=scale_max,
                     contrast_min=contrast_min, occlusion=occlusion, occluder_max=occluder_max,
                     pixel_noise=pixel_noise)
        _validate(seed, knobs)
        self.seed = int(seed)
        self.knobs = {k: (int(v) if k in _INT_KNOBS else float(v)) for k, v in knobs.items()}
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.task = Task("multiclass", CLASSES)
        self.specs = {
            "audio": InputSpec((AUDIO_FRAMES, N_MELS), (-AUDIO_CLIP, AUDIO_CLIP), "log-mel (z-scored)"),
            "video": InputSpec((self.knobs["frames"], self.knobs["image_size"], self.knobs["image_size"]),
                               (0.0, 1.0), "pixel"),
        }
        self._sizes = split_sizes(self.knobs["n"])
        self._payload: dict | None = None
        self._manifests: dict[str, str] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ the Dataset contract

    def splits(self) -> tuple[str, ...]:
        return SPLITS

    def size(self, split: str) -> int:
        return self._sizes[self._check_split(split)]

    def batches(self, split: str, batch_size: int, *, shuffle: torch.Generator | None = None,
                limit: int | None = None) -> Iterator[Batch]:
        self._check_split(split)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"avdigits: batch_size must be a positive integer, got {batch_size!r}")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise UserError(f"avdigits: limit must be a non-negative integer or None, got {limit!r}")
        data = self._data()[split]
        n = data["target"].shape[0] if limit is None else min(limit, data["target"].shape[0])
        # limit picks the first n samples of the fixed order; shuffle only reorders those
        order = torch.arange(n) if shuffle is None else torch.randperm(n, generator=shuffle)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            # indexing copies: a consumer that writes into a batch cannot corrupt the dataset
            yield Batch(
                {"audio": data["audio"][idx], "video": data["video"][idx]},
                data["target"][idx],
                [f"{split}/{int(i):05d}" for i in idx],
            )

    def manifest(self, split: str) -> str:
        self._check_split(split)
        if split not in self._manifests:
            data = self._data()[split]
            h = hashlib.sha256()
            h.update("\n".join(f"{split}/{i:05d}" for i in range(data["target"].shape[0])).encode())
            for key in ("target", "audio", "video"):
                t = data[key].contiguous()
                h.update(f"|{key}:{t.dtype}:{list(t.shape)}|".encode())
                h.update(t.numpy().tobytes())
            self._manifests[split] = h.hexdigest()
        return self._manifests[split]

    def info(self) -> dict:
        meta = self._data()["meta"]
        return {
            "dataset": "avdigits",
            "format_version": FORMAT_VERSION,
            "seed": self.seed,
            "knobs": dict(self.knobs),
            "cache_key": self.cache_key(),
            "sizes": dict(self._sizes),
            "split_fractions": dict(zip(SPLITS, FRACTIONS)),
            "classes": list(CLASSES),
            "audio": {
                "layout": "[time, mel]",
                "source": "English digit words synthesised by eSpeak NG (espeakng-loader wheel)",
                "voices": meta["voices"],
                "synthesis_rate_hz": meta["synthesis_rate_hz"],
                "sample_rate_hz": SAMPLE_RATE,
                "window_s": WINDOW_SAMPLES / SAMPLE_RATE,
                "noise": "Gaussian noise with a random spectral slope (white to brown), SNR drawn "
                         "uniformly in dB against the speech's power while it is active",
                "features": {
                    "kind": "log-mel", "n_fft": N_FFT, "win_length": WIN_LENGTH, "hop_length": HOP_LENGTH,
                    "n_mels": N_MELS, "f_min": F_MIN, "f_max": F_MAX, "window": "hann", "center": True,
                    "mel_scale": "htk", "power": 2.0, "log": f"10*log10(mel_power + {LOG_FLOOR:g})",
                    "library": "torchaudio.transforms.MelSpectrogram",
                },
                "normalisation": {
                    "kind": "z-score per mel bin, then clipped", "computed_on": "train",
                    "mean": meta["mean"], "std": meta["std"], "clip": [-AUDIO_CLIP, AUDIO_CLIP],
                },
                "bounds": list(self.specs["audio"].bounds),
            },
            "video": {
                "layout": "[frames, height, width] (grey)",
                "source": "scikit-learn load_digits (1,797 8x8 scans), scans split per class before pairing",
                "scans_per_split": meta["scans_per_split"],
                "bounds": list(self.specs["video"].bounds),
            },
            "generator": meta["versions"],
        }

    def provenance(self, split: str) -> dict[str, list]:
        """How each sample of ``split`` was made, in the dataset's order: the scan index into
        ``sklearn.datasets.load_digits()``, the spoken word, voice, rate, pitch, and the drawn
        degradations (SNR, gain, noise slope, scale, contrast, occlusion, pixel noise)."""
        self._check_split(split)
        data = self._data()
        prov = {k: v.tolist() for k, v in data[split]["provenance"].items()}
        voices = data["meta"]["voice_names"]
        prov["voice"] = [voices[i] for i in prov["voice"]]
        prov["word"] = [CLASSES[w] for w in prov["word"]]
        prov["id"] = [f"{split}/{i:05d}" for i in range(len(prov["word"]))]
        return prov

    # ------------------------------------------------------------------ building and caching

    def cache_key(self) -> str:
        blob = json.dumps({"format": FORMAT_VERSION, "seed": self.seed, "knobs": self.knobs,
                           "versions": _generator_versions()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def cache_path(self) -> Path:
        return self.cache_dir / "avdigits" / f"avdigits-v{FORMAT_VERSION}-{self.cache_key()[:20]}.pt"

    def _check_split(self, split: str) -> str:
        if split not in SPLITS:
            raise UserError(f"avdigits has no split {split!r} (splits: {', '.join(SPLITS)})")
        return split

    def _data(self) -> dict:
        if self._payload is None:
            with self._lock:
                if self._payload is None:
                    self._payload = self._load_or_build()
        return self._payload

    def _load_or_build(self) -> dict:
        path, key = self.cache_path(), self.cache_key()
        if path.exists():
            try:
                payload = torch.load(path, map_location="cpu", weights_only=True)
                if payload.get("key") != key or not self._shapes_ok(payload):
                    raise ValueError("it holds other data than its name says")
                return payload
            except Exception as exc:  # unreadable, truncated or foreign: rebuild and replace it
                warnings.warn(f"avdigits: ignoring the cache file {path} ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}); rebuilding it", stacklevel=2)
        with training_threads():  # the same bits whoever builds it, on any core count (avharness.numerics)
            payload = build(self.seed, self.knobs)
        payload["key"] = key
        _atomic_save(payload, path)
        return payload

    def _shapes_ok(self, payload: dict) -> bool:
        for split in SPLITS:
            d = payload.get(split, {})
            n = self._sizes[split]
            if "provenance" not in d or tuple(d["audio"].shape) != (n, *self.specs["audio"].shape):
                return False
            if tuple(d["video"].shape) != (n, *self.specs["video"].shape) or tuple(d["target"].shape) != (n,):
                return False
        return True


_INT_KNOBS = {"n", "frames", "image_size", "rate_min", "rate_max"}


def _validate(seed, k: dict) -> None:
    def bad(msg):
        raise UserError(f"avdigits: {msg}")

    if isinstance(seed, bool) or not isinstance(seed, int):
        bad(f"seed must be an integer, got {seed!r}")
    for name in _INT_KNOBS:
        if isinstance(k[name], bool) or not isinstance(k[name], int):
            bad(f"{name} must be an integer, got {k[name]!r}")
    for name, v in k.items():
        if name not in _INT_KNOBS and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
            bad(f"{name} must be a number, got {v!r}")
    if k["n"] < 40:
        bad(f"n must be at least 40 (a few samples of each digit in every split), got {k['n']}")
    if k["frames"] < 1 or k["image_size"] < 8:
        bad(f"frames must be >= 1 and image_size >= 8, got frames={k['frames']}, image_size={k['image_size']}")
    if k["snr_db_min"] > k["snr_db_max"]:
        bad(f"snr_db_min ({k['snr_db_min']}) must not exceed snr_db_max ({k['snr_db_max']})")
    if not 80 <= k["rate_min"] <= k["rate_max"] <= 450:
        bad(f"speaking rates must satisfy 80 <= rate_min <= rate_max <= 450 (words/min), got "
            f"{k['rate_min']}..{k['rate_max']}")
    if not 0.1 <= k["scale_min"] <= k["scale_max"] <= 2.0:
        bad(f"scales must satisfy 0.1 <= scale_min <= scale_max <= 2, got {k['scale_min']}..{k['scale_max']}")
    for name in ("contrast_min", "occlusion", "occluder_max"):
        if not 0.0 <= k[name] <= 1.0:
            bad(f"{name} must be in [0, 1], got {k[name]}")
    for name in ("gain_db", "max_shift", "max_rotation", "pixel_noise"):
        if k[name] < 0:
            bad(f"{name} must be >= 0, got {k[name]}")


def _generator_versions() -> dict:
    # torch's own string carries the build (+cpu, +cu130...); the others from metadata, so that
    # computing the cache key imports nothing heavy
    versions = {dist: _version(dist) for dist in ("torchaudio", "numpy", "scikit-learn", "espeakng-loader")}
    return {"torch": str(torch.__version__), **versions}


def _atomic_save(payload: dict, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


# ---------------------------------------------------------------------------------------- build


def _rng(seed: int, *parts) -> np.random.Generator:
    return np.random.default_rng(derive_seed(seed, "avdigits", *parts))


def _split_scans(labels: np.ndarray, seed: int) -> dict[str, dict[int, np.ndarray]]:
    """{split: {digit: scan indices}}: each digit's scans split between train/val/test before any pairing."""
    pools: dict[str, dict[int, np.ndarray]] = {s: {} for s in SPLITS}
    rng = _rng(seed, "scans")
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        a = int(round(len(idx) * FRACTIONS[0]))
        b = a + int(round(len(idx) * FRACTIONS[1]))
        for s, part in zip(SPLITS, (idx[:a], idx[a:b], idx[b:])):
            pools[s][c] = part
    return pools


def _plan_split(seed: int, split: str, n: int, pool: dict[int, np.ndarray], voices: list[str], knobs: dict):
    """A split's plan (label, scan, voice and prosody of every sample) and its eSpeak NG requests."""
    from avharness_plugins.datasets.avdigits import speech

    rng = _rng(seed, split, "plan")
    target = rng.permutation(np.arange(n) % 10)
    scans = np.empty(n, dtype=np.int64)
    for c in range(10):
        where = np.flatnonzero(target == c)
        # every scan once before any scan twice, in a random order
        reps = int(math.ceil(len(where) / len(pool[c])))
        order = np.concatenate([rng.permutation(pool[c]) for _ in range(reps)])[: len(where)]
        scans[where] = order
    voice_idx = rng.integers(0, len(voices), n)
    wpm = rng.integers(knobs["rate_min"], knobs["rate_max"] + 1, n)
    pitch = rng.integers(15, 86, n)
    prange = rng.integers(10, 91, n)
    requests = [speech.Utterance(CLASSES[t], voices[v], int(r), int(p), int(q),
                                 derive_seed(seed, "avdigits", split, "espeak", i) % (1 << 31))
                for i, (t, v, r, p, q) in enumerate(zip(target, voice_idx, wpm, pitch, prange))]
    plan = {"target": target, "scans": scans, "voice": voice_idx, "rate_wpm": wpm, "pitch": pitch,
            "pitch_range": prange, "word": np.array([CLASSES.index(u.text) for u in requests])}
    return plan, requests


def _split_tensors(plan: dict, video: torch.Tensor, audio_facts: dict, video_facts: dict) -> dict:
    """A split's video, target and provenance (how each sample was made) as tensors; audio is added later."""
    return {
        "video": video,
        "target": torch.from_numpy(plan["target"]).long(),
        # how each sample was made: for analyses (e.g. accuracy against SNR), not a model input
        "provenance": {
            "scan": torch.from_numpy(plan["scans"]).long(),
            **{
                k: torch.from_numpy(np.asarray(plan[k])).long()
                for k in ("word", "voice", "rate_wpm", "pitch", "pitch_range")
            },
            **audio_facts,
            **video_facts,
        },
    }


def _normalise_audio(logmels: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Every split's log-mels z-scored per mel bin with train statistics and clipped; (audio, mean, std)."""
    # numpy's reductions are single-threaded: torch's would change in the last bits with the number
    # of threads, and so would every normalised feature
    train = logmels["train"].numpy().astype(np.float64).reshape(-1, N_MELS)
    mean = torch.from_numpy(train.mean(0))
    std = torch.from_numpy(train.std(0, ddof=1)).clamp_min(1e-3)
    audio = {}
    for s in SPLITS:
        z = ((logmels[s].double() - mean) / std).clamp(-AUDIO_CLIP, AUDIO_CLIP).float()
        audio[s] = z.contiguous()
    return audio, mean, std


def _build_meta(mean, std, knobs: dict, voices: list[str], facts: dict, pools: dict, t0: float) -> dict:
    """The build's JSON metadata: normalisation statistics, voices, scans per split, versions, build time."""
    from avharness_plugins.datasets.avdigits import speech

    meta = {
        "mean": [float(x) for x in mean.float()],
        "std": [float(x) for x in std.float()],
        "voices": {
            "accents": list(speech.ACCENTS),
            "variants": [v or "(default)" for v in speech.VARIANTS],
            "rate_wpm": [knobs["rate_min"], knobs["rate_max"]],
            "pitch": [15, 85],
            "pitch_range": [10, 90],
        },
        "voice_names": voices,
        "synthesis_rate_hz": facts["sample_rate"],
        "scans_per_split": {s: int(sum(len(p) for p in pools[s].values())) for s in SPLITS},
        "versions": {**_generator_versions(), "espeak_ng": facts["espeak_ng"]},
        "build_s": round(time.perf_counter() - t0, 2),
    }
    # plain JSON types only: the cache is read back with torch.load(weights_only=True)
    return json.loads(json.dumps(meta))


def build(seed: int, knobs: dict) -> dict:
    """Generate every split from scratch (no cache): a dict of tensors and JSON-able metadata."""
    from sklearn.datasets import load_digits

    from avharness_plugins.datasets.avdigits import speech
    t0 = time.perf_counter()
    digits = load_digits()
    images = torch.from_numpy(digits.images / 16.0).float()  # [1797, 8, 8] in [0, 1]
    sizes = split_sizes(knobs["n"])

    # 1. the scans of each digit, split between train/val/test before any pairing
    pools = _split_scans(np.asarray(digits.target), seed)

    # 2. a plan per split: label, scan, voice and prosody of every sample
    plans = {}
    requests: list = []
    voices = [a + (f"+{v}" if v else "") for a in speech.ACCENTS for v in speech.VARIANTS]
    for s in SPLITS:
        plans[s], mine = _plan_split(seed, s, sizes[s], pools[s], voices, knobs)
        requests += mine

    # 3. speech for every sample, in one fresh eSpeak NG process (reproducible: see speech.py)
    utterances, facts = speech.synthesize_many(requests)

    # 4. features
    out: dict = {}
    pos = 0
    logmels = {}
    for s in SPLITS:
        n = sizes[s]
        logmels[s], audio_facts = _audio_logmel(utterances[pos:pos + n], facts["sample_rate"], seed, s, knobs)
        pos += n
        video, video_facts = _render_video(images[plans[s]["scans"]], seed, s, knobs)
        out[s] = _split_tensors(plans[s], video, audio_facts, video_facts)
    audio, mean, std = _normalise_audio(logmels)
    for s in SPLITS:
        out[s]["audio"] = audio[s]
    out["meta"] = _build_meta(mean, std, knobs, voices, facts, pools, t0)
    return out


def _audio_logmel(utterances: list[np.ndarray], rate_in: int, seed: int, split: str, knobs: dict):
    """[N, AUDIO_FRAMES, N_MELS] log-mel (not yet normalised) of each utterance placed in noise, and
    the per-sample draws."""
    import torchaudio

    n = len(utterances)
    rng = _rng(seed, split, "audio")
    gen = generator(seed, "avdigits", split, "audio-noise")
    snr_db = rng.uniform(knobs["snr_db_min"], knobs["snr_db_max"], n)
    gain_db = rng.uniform(-knobs["gain_db"], knobs["gain_db"], n)
    slope = rng.uniform(0.0, 2.0, n)  # noise power ~ 1 / f**slope: white (0) to brown (2)
    place = rng.uniform(0.0, 1.0, n)

    max_in = rate_in  # utterances longer than the 1 s window are cut (rare: only the slowest rates)
    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=SAMPLE_RATE,
        n_fft=N_FFT,
        win_length=WIN_LENGTH,
        hop_length=HOP_LENGTH,
        f_min=F_MIN,
        f_max=F_MAX,
        n_mels=N_MELS,
        power=2.0,
        center=True,
    )
    freqs = torch.fft.rfftfreq(WINDOW_SAMPLES, d=1.0 / SAMPLE_RATE).clamp_min(50.0)
    feats = []
    for start in range(0, n, _CHUNK):
        stop = min(n, start + _CHUNK)
        raw = torch.zeros(stop - start, max_in)
        lengths = []
        for row, x in enumerate(utterances[start:stop]):
            x = torch.from_numpy(x.astype(np.float32) / 32768.0)
            active = torch.nonzero(x.abs() > 0.02 * x.abs().max().clamp_min(1e-6)).flatten()
            x = x[int(active[0]) : int(active[-1]) + 1] if len(active) else x
            x = x[:max_in]
            raw[row, : len(x)] = x
            lengths.append(len(x))
        wav = torchaudio.functional.resample(raw, rate_in, SAMPLE_RATE)
        wav = wav[:, :WINDOW_SAMPLES]
        noise = torch.randn(stop - start, WINDOW_SAMPLES, generator=gen)
        spectrum = torch.fft.rfft(noise)
        tilt = freqs.unsqueeze(0) ** (-torch.from_numpy(slope[start:stop]).float().unsqueeze(1) / 2)
        noise = torch.fft.irfft(spectrum * tilt, n=WINDOW_SAMPLES)
        noise = noise / noise.pow(2).mean(1, keepdim=True).sqrt()
        mixed = torch.zeros(stop - start, WINDOW_SAMPLES)
        for row in range(stop - start):
            i = start + row
            m = min(WINDOW_SAMPLES, int(math.ceil(lengths[row] * SAMPLE_RATE / rate_in)))
            speech_part = wav[row, :m]
            level = SPEECH_RMS * 10 ** (gain_db[i] / 20)
            speech_part = speech_part * (level / speech_part.pow(2).mean().sqrt().clamp_min(1e-8))
            offset = int(place[i] * (WINDOW_SAMPLES - m))
            mixed[row, offset : offset + m] = speech_part
            mixed[row] += noise[row] * (level * 10 ** (-snr_db[i] / 20))
        feats.append(10.0 * torch.log10(mel(mixed) + LOG_FLOOR).transpose(1, 2))
    drawn = {"snr_db": snr_db, "gain_db": gain_db, "noise_slope": slope}
    return torch.cat(feats).contiguous(), {k: torch.from_numpy(v).float() for k, v in drawn.items()}


def _pose_theta(u, n: int, t: int, knobs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Per clip a scale and a pose that drifts and jitters per frame: (scale [n], theta [n, t, 2, 3])."""
    # pose: a clip-level pose plus a slow drift and a small per-frame jitter
    scale = u(knobs["scale_min"], knobs["scale_max"])
    angle0 = u(-knobs["max_rotation"], knobs["max_rotation"])
    shift0 = u(-knobs["max_shift"], knobs["max_shift"], (n, 2))
    drift = u(-knobs["max_shift"] / 3, knobs["max_shift"] / 3, (n, 2))
    spin = u(-knobs["max_rotation"] / 4, knobs["max_rotation"] / 4)
    jitter = u(-0.03, 0.03, (n, t, 2))
    frac = (torch.arange(t).float() - (t - 1) / 2) / max(t - 1, 1)  # -0.5..0.5 across the clip
    angle = torch.deg2rad(angle0[:, None] + spin[:, None] * frac[None])  # [n, t]
    shift = shift0[:, None] + drift[:, None] * frac[None, :, None] + jitter  # [n, t, 2] (fractions)
    cos, sin = torch.cos(angle) / scale[:, None], torch.sin(angle) / scale[:, None]
    # theta maps output coordinates to input coordinates (both in [-1, 1])
    theta = torch.stack(
        [
            torch.stack([cos, -sin, -2 * shift[..., 0]], -1),
            torch.stack([sin, cos, -2 * shift[..., 1]], -1),
        ],
        -2,
    )  # [n, t, 2, 3]
    return scale, theta


def _warp(scans: torch.Tensor, theta: torch.Tensor, size: int) -> torch.Tensor:
    """[n, t, S, S]: each 8x8 scan sampled bilinearly under each frame's affine map."""
    n, t = theta.shape[:2]
    grid = F.affine_grid(theta.reshape(n * t, 2, 3), [n * t, 1, size, size], align_corners=False)
    src = scans.unsqueeze(1).repeat_interleave(t, 0)  # [n*t, 1, 8, 8]
    frames = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return frames.view(n, t, size, size)


def _occluder_mask(rng: np.random.Generator, u, n: int, size: int, knobs: dict):
    """A rectangle per clip, in a fraction ``occlusion`` of the clips: (occluded [n], mask [n, 1, S, S], shade [n])."""
    occluded = torch.from_numpy(rng.uniform(0, 1, n) < knobs["occlusion"])
    side = (u(0.25, 1.0, (n, 2)) * knobs["occluder_max"] * size).round().long().clamp_min(1)
    corner = (u(0.0, 1.0, (n, 2)) * (size - side + 1).float()).floor().long()
    shade = u(0.0, 1.0)
    ys = torch.arange(size)
    rows = (ys[None] >= corner[:, :1]) & (ys[None] < corner[:, :1] + side[:, :1])  # [n, S]
    cols = (ys[None] >= corner[:, 1:]) & (ys[None] < corner[:, 1:] + side[:, 1:])
    mask = (rows[:, :, None] & cols[:, None, :] & occluded[:, None, None])[:, None]  # [n, 1, S, S]
    return occluded, mask, shade


def _render_video(scans: torch.Tensor, seed: int, split: str, knobs: dict):
    """[N, T, S, S] frames in [0, 1] of each 8x8 scan (see the module docstring), and the
    per-sample draws."""
    n, t, size = scans.shape[0], knobs["frames"], knobs["image_size"]
    rng = _rng(seed, split, "video")
    gen = generator(seed, "avdigits", split, "video-noise")

    def u(lo, hi, shape=(n,)):
        return torch.from_numpy(rng.uniform(lo, hi, shape)).float()

    # the draws from rng happen in this order: pose, contrast, background, occluder, noise level
    scale, theta = _pose_theta(u, n, t, knobs)
    frames = _warp(scans, theta, size)

    # lower contrast on a random grey background
    contrast = u(knobs["contrast_min"], 1.0)
    background = u(0.0, 1.0) * (1.0 - contrast)
    frames = background[:, None, None, None] + contrast[:, None, None, None] * frames

    # an occluder: a grey rectangle, fixed in the clip, in a fraction ``occlusion`` of the clips
    occluded, mask, shade = _occluder_mask(rng, u, n, size, knobs)
    frames = torch.where(mask, shade[:, None, None, None].expand_as(frames), frames)

    # sensor noise, independent per pixel and frame, at a clip-level strength
    sigma = u(0.0, knobs["pixel_noise"])
    frames = frames + sigma[:, None, None, None] * torch.randn(frames.shape, generator=gen)
    drawn = {
        "scale": scale,
        "contrast": contrast,
        "occluded": occluded.long(),
        "occluded_fraction": (mask.sum((1, 2, 3)).float() / (size * size)),
        "pixel_noise": sigma,
    }
    return frames.clamp(0.0, 1.0).contiguous(), drawn


#: the factory registered as ``avdigits`` (its keyword arguments are the suite parameters)
build_avdigits = AVDigits


def register_datasets(register):
    register("avdigits", build_avdigits)
