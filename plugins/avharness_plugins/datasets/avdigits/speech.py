"""Spoken words synthesised by eSpeak NG, loaded with ``ctypes`` from the ``espeakng-loader`` wheel.

The wheel bundles ``libespeak-ng`` and its voice data, so synthesis needs no system package and no
network. Only what ``avdigits`` needs is wrapped: pick a voice (``"en-us"``, ``"en+f3"``, ...), set
rate, pitch and pitch range, and synthesise a short text to int16 samples at 22050 Hz.

Reproducibility takes two measures. eSpeak NG seeds its random generator (breathy and whispered
voices, klatt noise) from the clock at initialisation, so every request carries a seed passed to
``espeak_ng_SetRandSeed`` (and libc's ``srand``) just before it is synthesised. And the library
carries other state from one utterance to the next (pitch-flutter counters, filter memories), so
the same request can give different samples after different predecessors; a fixed sequence of
requests from a freshly initialised library is reproducible, so ``synthesize_many`` runs each batch
in a fresh Python process that imports nothing but the standard library (this file run as a
script). A batch's samples depend only on the batch.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    # Run as the worker script, this file's folder is sys.path[0]: keep the plugin modules beside it
    # (datasets.py, models.py, ...) from shadowing anything the standard library imports.
    del sys.path[0]

import ctypes
import json
import subprocess
from dataclasses import dataclass
from importlib import metadata

if __name__ == "__main__":  # the worker: keep its start-up light (no torch, no numpy)
    UserError = RuntimeError
else:
    import numpy as np

    from avharness import UserError

# speak_lib.h constants
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # on a bad data folder, return an error instead of calling exit()
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_RATE, _PITCH, _RANGE = 1, 3, 4
_EE_OK = 0

#: English accents shipped with eSpeak NG (identifiers accepted by espeak_SetVoiceByName)
ACCENTS = ("en", "en-us", "en-029", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-us-nyc")
#: voice variants (``espeak-ng-data/voices/!v``): "" is the accent's own voice
VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5",
            "klatt", "klatt2", "klatt3", "croak", "whisper")


class SpeechUnavailable(UserError):
    """eSpeak NG could not be loaded, or refused a request."""


@dataclass(frozen=True)
class Utterance:
    """One synthesis request. ``rate`` in words per minute (80-450); ``pitch``, ``pitch_range`` 0-100."""

    text: str
    voice: str = "en"
    rate: int = 175
    pitch: int = 50
    pitch_range: int = 50
    #: seeds eSpeak NG's random generator for this utterance (0 <= seed < 2**31)
    seed: int = 0


# ----------------------------------------------------------------------------- worker side

_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


def _open_library(lib_path: str, data_path: str):
    lib = ctypes.CDLL(lib_path)
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                 ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_Synchronize.restype = ctypes.c_int
    lib.espeak_Info.argtypes = [ctypes.c_void_p]
    lib.espeak_Info.restype = ctypes.c_char_p
    if not hasattr(lib, "espeak_ng_SetRandSeed"):
        raise RuntimeError("this eSpeak NG has no espeak_ng_SetRandSeed (added in 1.52): its synthesis "
                           "cannot be made reproducible; upgrade the 'espeakng-loader' wheel")
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_ng_SetRandSeed.restype = None
    rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), _INITIALIZE_DONT_EXIT)
    if rate <= 0:
        raise RuntimeError(f"espeak_Initialize failed with the data folder {data_path!r}")
    return lib, int(rate)


def _serve() -> None:
    """Read one JSON job on stdin; write a JSON header line, then every utterance's int16 bytes."""
    job = json.loads(sys.stdin.buffer.read())
    out = sys.stdout.buffer
    try:
        lib, rate = _open_library(job["lib"], job["data"])
        libc = ctypes.CDLL(None)
        chunks: list[bytes] = []

        def collect(wav, n, _events):
            if wav and n > 0:
                chunks.append(ctypes.string_at(wav, 2 * n))
            return 0  # continue

        callback = _CALLBACK(collect)  # referenced until the end of _serve: ctypes frees it otherwise
        lib.espeak_SetSynthCallback(callback)
        blobs = []
        for text, voice, wpm, pitch, pitch_range, seed in job["requests"]:
            if lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
                # a failed lookup would silently keep the previous voice: refuse instead
                raise RuntimeError(f"eSpeak NG has no voice {voice!r} (accents: {', '.join(ACCENTS)})")
            for param, value in ((_RATE, wpm), (_PITCH, pitch), (_RANGE, pitch_range)):
                lib.espeak_SetParameter(param, int(value), 0)
            chunks.clear()
            lib.espeak_ng_SetRandSeed(int(seed))
            libc.srand(int(seed))
            data = text.encode() + b"\0"
            err = lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            lib.espeak_Synchronize()
            if err != _EE_OK:
                raise RuntimeError(f"eSpeak NG failed to synthesise {text!r} with voice {voice!r} (error {err})")
            blobs.append(b"".join(chunks))
        header = {"sample_rate": rate, "espeak_ng": lib.espeak_Info(None).decode(),
                  "lengths": [len(b) // 2 for b in blobs]}
    except Exception as exc:
        out.write((json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n").encode())
        out.flush()
        sys.exit(1)
    out.write((json.dumps(header) + "\n").encode())
    for b in blobs:
        out.write(b)
    out.flush()


# ----------------------------------------------------------------------------- caller side


def loader_version() -> str:
    try:
        return metadata.version("espeakng-loader")
    except metadata.PackageNotFoundError:
        return "?"


def _paths() -> tuple[str, str]:
    try:
        import espeakng_loader

        return espeakng_loader.get_library_path(), espeakng_loader.get_data_path()
    except Exception as exc:
        raise SpeechUnavailable(
            f"eSpeak NG could not be found ({type(exc).__name__}: {exc}); avdigits synthesises its spoken "
            "digits with it: install the 'espeakng-loader' wheel (pip install espeakng-loader)"
        ) from exc


def synthesize_many(requests: list[Utterance], timeout: float = 600.0) -> tuple[list[np.ndarray], dict]:
    """int16 samples for every request, and facts about the generator.

    The returned dict holds ``sample_rate`` (22050) and the versions (``espeak_ng``,
    ``espeakng_loader``). The same list of requests always gives the same samples.
    """
    lib_path, data_path = _paths()
    job = {"lib": lib_path, "data": data_path,
           "requests": [[u.text, u.voice, int(u.rate), int(u.pitch), int(u.pitch_range), int(u.seed) % (1 << 31)]
                        for u in requests]}
    try:
        proc = subprocess.run([sys.executable, __file__], input=json.dumps(job).encode(),
                              capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SpeechUnavailable(f"the eSpeak NG worker process failed: {type(exc).__name__}: {exc}") from exc
    first, _, body = proc.stdout.partition(b"\n")
    try:
        header = json.loads(first)
    except ValueError:
        header = {"error": (proc.stderr.decode(errors="replace").strip().splitlines() or ["no output"])[-1]}
    if proc.returncode != 0 or "error" in header:
        raise SpeechUnavailable(
            f"eSpeak NG synthesis failed: {header.get('error', 'exit status ' + str(proc.returncode))} "
            f"(library {lib_path} from the 'espeakng-loader' wheel)"
        )
    samples, pos = [], 0
    for n in header["lengths"]:
        samples.append(np.frombuffer(body, dtype=np.int16, count=n, offset=pos).copy())
        pos += 2 * n
    if pos != len(body):
        raise SpeechUnavailable(f"eSpeak NG worker returned {len(body)} bytes, expected {pos}")
    facts = {"sample_rate": header["sample_rate"], "espeak_ng": header["espeak_ng"],
             "espeakng_loader": loader_version()}
    return samples, facts


def synthesize(text: str, voice: str = "en", rate: int = 175, pitch: int = 50, pitch_range: int = 50,
               seed: int = 0):
    """One utterance: (int16 samples, sample rate)."""
    samples, facts = synthesize_many([Utterance(text, voice, rate, pitch, pitch_range, seed)])
    return samples[0], facts["sample_rate"]


if __name__ == "__main__":
    _serve()
