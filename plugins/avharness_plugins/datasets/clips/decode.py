"""Clip decoding: audio to 16 kHz mono waveforms, video to frames at 1 fps.

- Audio from ``.wav``/``.flac``/``.ogg`` is read with soundfile; from containers (``.mp4``, ``.mkv``,
  ``.webm``, ...) with PyAV. Either way it is averaged to mono, resampled with torchaudio's
  ``functional.resample`` (the same resampler for every format, so a clip decodes alike whatever it
  came in), clipped to [-1, 1] (as a DAC would: float files and resampling overshoot can exceed
  it) and cut or zero-padded to the clip length. Only the first ``seconds`` of a file are decoded.
- Video is decoded with PyAV; for each 1-s window of the first ``n`` seconds the frame nearest the
  window's centre is kept (RGB, uint8). Windows past the end of a short video (a 9.96-s clip, a
  missing last second) repeat the last decoded frame rather than inventing black frames.

Every failure to read a file is a :class:`ClipError` whose message is the reason in one line; the
datasets decide whether that makes the clip "missing" or an error (see ``datasets.clips.dataset``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SAMPLE_RATE = 16000
SOUNDFILE_EXTS = (".wav", ".flac", ".ogg")
CONTAINER_EXTS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4a")
AUDIO_EXTS = SOUNDFILE_EXTS + CONTAINER_EXTS


class ClipError(Exception):
    """A clip that cannot be read (missing stream, corrupt header or data); str() is the reason."""


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text and text[0] else type(exc).__name__


def _is_soundfile(path: Path) -> bool:
    return path.suffix.lower() in SOUNDFILE_EXTS


# ----------------------------------------------------------------------------------------- probing


def _too_short(seconds: float, min_seconds: float) -> ClipError:
    return ClipError(f"audio is {seconds:.3g} s long, under the minimum {min_seconds:.3g} s (min_duration × "
                     "clip_seconds): a file cut short")


def probe(path: str | Path, *, audio: bool = True, video: bool = False, min_seconds: float = 0.0) -> None:
    """Read only the header of ``path`` and check it holds the streams asked for; ClipError if not.

    Cheap (no sample is decoded): soundfile's header parse, or PyAV opening the container (which
    reads the stream table, e.g. an mp4's moov atom). With ``min_seconds``, audio shorter than that
    is a ClipError too: libsndfile counts the frames actually present (a wav cut right after its
    header has almost none, whatever the header claims); for containers, the audio stream's (or
    container's) stated duration, when it states one.
    """
    path = Path(path)
    if _is_soundfile(path):
        if video:
            raise ClipError(f"{path.suffix} file has no video stream")
        import soundfile as sf

        try:
            info = sf.info(str(path))
        except Exception as exc:  # soundfile raises LibsndfileError/RuntimeError on corrupt files
            raise ClipError(f"unreadable audio header ({_why(exc)})") from None
        if info.frames <= 0 or info.samplerate <= 0:
            raise ClipError("audio file has no samples")
        if info.frames / info.samplerate < min_seconds:
            raise _too_short(info.frames / info.samplerate, min_seconds)
        return
    import av

    try:
        with av.open(str(path)) as container:
            if audio and not container.streams.audio:
                raise ClipError("no audio stream")
            if video and not container.streams.video:
                raise ClipError("no video stream")
            if audio and min_seconds > 0:
                seconds = _stated_seconds(container)
                if seconds is not None and seconds < min_seconds:
                    raise _too_short(seconds, min_seconds)
    except ClipError:
        raise
    except Exception as exc:  # av.error.InvalidDataError and friends
        raise ClipError(f"unreadable container ({_why(exc)})") from None


def _stated_seconds(container) -> float | None:
    stream = container.streams.audio[0]
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # av.time_base
    return None


# ------------------------------------------------------------------------------------------- audio


def decode_audio(path: str | Path, seconds: float, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """The first ``seconds`` of ``path`` as float32 mono Tensor[round(seconds * sample_rate)] in [-1, 1]."""
    path = Path(path)
    n_out = int(round(seconds * sample_rate))
    try:
        wav, rate = _read_soundfile(path, seconds) if _is_soundfile(path) else _read_container(path, seconds)
    except ClipError:
        raise
    except Exception as exc:
        raise ClipError(f"cannot decode audio ({_why(exc)})") from None
    if wav.numel() == 0:
        raise ClipError("no audio samples")
    if not torch.isfinite(wav).all():
        raise ClipError("audio holds NaN or inf samples")
    if rate != sample_rate:
        import torchaudio

        wav = torchaudio.functional.resample(wav, rate, sample_rate)
    wav = wav.clamp(-1.0, 1.0)[:n_out]
    if wav.numel() < n_out:
        wav = F.pad(wav, (0, n_out - wav.numel()))
    return wav.contiguous()


def _read_soundfile(path: Path, seconds: float) -> tuple[torch.Tensor, int]:
    import soundfile as sf

    with sf.SoundFile(str(path)) as f:
        rate = f.samplerate
        # one extra sample so the resampler's last output sample has its right-hand neighbour
        data = f.read(frames=int(math.ceil(seconds * rate)) + 1, dtype="float32", always_2d=True)
    return torch.from_numpy(data).mean(dim=1), rate


def _read_container(path: Path, seconds: float) -> tuple[torch.Tensor, int]:
    import av

    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise ClipError("no audio stream")
        stream = container.streams.audio[0]
        # planar float whatever the codec's sample format: [channels, samples] per frame
        resampler = av.AudioResampler(format="fltp")
        parts: list[np.ndarray] = []
        have, need, rate = 0, None, None
        for frame in container.decode(stream):
            rate = rate or frame.sample_rate
            need = need or int(math.ceil(seconds * rate)) + 1
            for out in resampler.resample(frame):
                parts.append(out.to_ndarray())
                have += parts[-1].shape[1]
            if have >= need:
                break
        else:
            for out in resampler.resample(None):
                parts.append(out.to_ndarray())
    if not parts or rate is None:
        raise ClipError("no audio samples")
    data = np.concatenate(parts, axis=1).astype(np.float32, copy=False)
    return torch.from_numpy(data).mean(dim=0), int(rate)


# ------------------------------------------------------------------------------------------- video


def decode_frames(path: str | Path, n_frames: int, fps: float = 1.0) -> torch.Tensor:
    """``n_frames`` RGB frames at ``fps`` from the start of ``path``: uint8 Tensor[n_frames, H, W, 3].

    Frame i is the decoded frame nearest the centre of window [i/fps, (i+1)/fps); windows after the
    last decoded frame repeat it, windows before the first (a stream starting late) take the first.
    """
    path = Path(path)
    if _is_soundfile(path):
        raise ClipError(f"{path.suffix} file has no video stream")
    import av

    best: dict[int, tuple[float, object]] = {}  # window -> (distance to its centre, av.VideoFrame)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ClipError("no video stream")
            stream = container.streams.video[0]
            rate = float(stream.average_rate or stream.guessed_rate or 25)
            for k, frame in enumerate(container.decode(stream)):
                t = frame.time if frame.time is not None else k / rate
                if t >= n_frames / fps:
                    break
                window = max(0, int(math.floor(t * fps)))
                gap = abs(t - (window + 0.5) / fps)
                if window not in best or gap < best[window][0]:
                    best[window] = (gap, frame)  # converted to RGB only once chosen (most frames are not)
            best = {w: (g, f.to_ndarray(format="rgb24")) for w, (g, f) in best.items()}
    except ClipError:
        raise
    except Exception as exc:
        raise ClipError(f"cannot decode video ({_why(exc)})") from None
    if not best:
        raise ClipError("no video frames")
    first = min(best)
    frames, last = [], best[first][1]
    for i in range(n_frames):
        if i in best:
            last = best[i][1]
        frames.append(best[i][1] if i in best else (best[first][1] if i < first else last))
    return torch.from_numpy(np.stack(frames))


def resize_center_crop(frames: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [T, H, W, 3] (or float [T, 3, H, W] in [0, 1]) -> float32 [T, 3, size, size] in [0, 1].

    The shorter side is resized to ``size`` (bilinear, antialiased) and the centre cropped, so the
    aspect ratio is kept whatever the source resolution.
    """
    x = frames.permute(0, 3, 1, 2).float() / 255.0 if frames.dtype == torch.uint8 else frames.float()
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, int(round(h * scale))), max(size, int(round(w * scale)))
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[:, :, top:top + size, left:left + size].clamp(0.0, 1.0).contiguous()
