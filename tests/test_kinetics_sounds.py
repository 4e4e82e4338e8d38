"""The ``kinetics_sounds`` dataset plugin and clip decoding, on tiny generated mp4 clips."""

from __future__ import annotations

import importlib.resources
import json
import pickle

import numpy as np
import pytest
import torch
import toy

import avharness
from avharness import UserError
from avharness_plugins.datasets import features
from avharness_plugins.datasets.clips import decode as cl
from avharness_plugins.datasets.kinetics_sounds import bundled_classes_path, read_classes
from avharness_plugins.testing import layouts as sl


def kinetics(**params):
    return avharness.get_registry().get("dataset", "kinetics_sounds")(**params)


def collect(ds, split="test", batch_size=2, **kw):
    return toy.collect(ds, split, batch_size, **kw)


@pytest.fixture
def layout(tmp_path):
    root = tmp_path / "ks"
    return root, sl.write_kinetics_sounds_layout(root, 4, splits=("train", "test"), missing=1, seconds=2.0)


SMALL = dict(clip_seconds=2.0, frames=2, image_size=16)


# ------------------------------------------------------------------------------------ class list


def test_bundled_class_list():
    path = importlib.resources.files("avharness_plugins.datasets") / "data" / "kinetics_sounds_classes.txt"
    assert path.is_file() and str(bundled_classes_path()) == str(path)
    names = read_classes(bundled_classes_path())
    assert len(names) == 34 and len(set(names)) == 34
    assert {"playing bagpipes", "tap dancing", "mowing lawn", "stomping grapes", "playing xylophone"} <= set(names)
    assert "arXiv:1705.08168" in path.read_text()  # provenance in the header


def test_class_list_file_errors(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("# mine\nsinging\nbowling  # a comment\nBowling\n")
    with pytest.raises(UserError, match=r"c\.txt:4: class 'Bowling' is listed twice \(first on line 3\)"):
        read_classes(p)
    p.write_text("# nothing\n\n")
    with pytest.raises(UserError, match="the class list is empty"):
        read_classes(p)


# ------------------------------------------------------------------------------------ dataset


def test_specs_sizes_ids_labels(layout):
    root, w = layout
    ds = kinetics(root=str(root), **SMALL)
    assert ds.task.kind == "multiclass" and len(ds.task.classes) == 34
    assert ds.splits() == ("train", "test")  # the CSVs present, in train/val/test order
    assert ds.specs["audio"].shape == (400, 64) and ds.specs["video"].shape == (2, 3, 16, 16)
    assert ds.specs["video"].bounds == (0.0, 1.0)
    for split in ("train", "test"):
        assert ds.size(split) == 4
        ids, target, inputs = collect(ds, split)
        assert ids == [i for i in w[split]["ids"] if i not in w[split]["missing"]]
        assert target.dtype == torch.long
        assert [ds.task.classes[t] for t in target.tolist()] == [w["classes"][w[split]["labels"][i]] for i in ids]
        v = inputs["video"]
        assert v.shape == (4, 2, 3, 16, 16) and float(v.min()) >= 0 and float(v.max()) <= 1
        assert float(inputs["audio"].min()) >= ds.specs["audio"].bounds[0]
    info = ds.info()
    items = info["splits"]["test"]["missing_items"]
    assert [m["id"] for m in items] == w["test"]["missing"] and "no clip file" in items[0]["reason"]
    assert info["classes"]["names"][0] == "blowing nose"
    json.dumps(info)


def test_frames_show_the_class_colour(layout):
    """The first class's colour (red) dominates the frames of its clips: the decoded pixels are real."""
    root, w = layout
    ds = kinetics(root=str(root), **SMALL)
    ids, target, inputs = collect(ds)
    red = inputs["video"][target == 0]
    assert len(red) and float(red[:, :, 0].mean()) > 0.6 and float(red[:, :, 1].mean()) < 0.4


def test_limit_shuffle_manifest(layout):
    root, w = layout
    ds = kinetics(root=str(root), **SMALL)
    ids = collect(ds)[0]
    assert collect(ds, limit=3)[0] == ids[:3]
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    assert collect(ds, limit=3, shuffle=g())[0] == collect(ds, limit=3, shuffle=g())[0]
    m = ds.manifest("test")
    assert kinetics(root=str(root), **SMALL).manifest("test") == m
    copy = pickle.loads(pickle.dumps(ds))  # e.g. sent to a loader worker: same samples, same data
    assert copy.manifest("test") == m and torch.equal(next(iter(copy.batches("test", 2))).inputs["video"],
                                                        next(iter(ds.batches("test", 2))).inputs["video"])
    assert ds.manifest("train") != m
    assert kinetics(root=str(root), **{**SMALL, "image_size": 24}).manifest("test") != m
    clip = w["test"]["paths"][ids[0]]
    sl.write_mp4(clip, sl.class_tone([1], 2.0, np.random.default_rng(1)),
                 sl.class_frames([1], 2.0, 4, 32, np.random.default_rng(1)))
    assert kinetics(root=str(root), **SMALL).manifest("test") != m


def test_missing_and_corrupt_clips(layout):
    root, w = layout
    with pytest.raises(UserError, match=r"split 'test' .*1 of 5 clips are missing"):
        kinetics(root=str(root), missing="error", **SMALL).size("test")
    ids = collect(kinetics(root=str(root), **SMALL))[0]
    clip = w["test"]["paths"][ids[1]]
    clip.write_bytes(clip.read_bytes()[:200])  # truncated: the container cannot be opened
    ds = kinetics(root=str(root), **SMALL)
    reasons = {m["id"]: m["reason"] for m in ds.info()["splits"]["test"]["missing_items"]}
    assert ds.size("test") == 3 and "unreadable clip" in reasons[ids[1]]
    ds = kinetics(root=str(root), check="exists", **SMALL)
    assert ds.size("test") == 4
    with pytest.raises(UserError, match=f"clip {ids[1]}: .*check: decode"):
        collect(ds)
    # audio-only clips cannot serve a video dataset: missing, not an error
    sl.write_wav(root / "clips" / "only_audio.wav", sl.class_tone([0], 2.0, np.random.default_rng(0)))
    (root / "extra.csv").write_text("path,label\nclips/only_audio.wav,bowling\n" + "\n".join(
        (root / "train.csv").read_text().splitlines()[1:3]) + "\n")
    ds = kinetics(root=str(root), splits={"extra": "extra.csv"}, **SMALL)
    assert ds.size("extra") == 2 and "no video stream" in ds.info()["splits"]["extra"]["missing_items"][0]["reason"]
    audio_only = kinetics(root=str(root), splits={"extra": "extra.csv"}, video="none", **SMALL)
    assert audio_only.size("extra") == 3 and set(audio_only.specs) == {"audio"}


def test_manifest_csv_errors(tmp_path, layout):
    root, w = layout
    bad = root / "bad.csv"
    cases = [
        ("clip,class\na.mp4,bowling\n", 1, "expected the header 'path,label'"),
        ("path,label\na.mp4,bowling\nb.mp4\n", 3, "expected 2 fields"),
        ("path,label\na.mp4,bowlng\n", 2, "label 'bowlng' is not a class of the Kinetics-Sounds class list (34 classes) -- did you mean 'bowling'?"),
        ("path,label\nx/a.mp4,bowling\ny/a.mp4,singing\n", 3, "clip id 'a' (the file stem) is already used on line 2"),
        ('path,label\n"a.mp4,bowling\n', 2, "cannot parse the CSV"),
    ]
    for text, line, needle in cases:
        bad.write_text(text)
        with pytest.raises(UserError) as e:
            kinetics(root=str(root), splits={"bad": "bad.csv"}, **SMALL).size("bad")
        assert f"{bad}:{line}:" in str(e.value) and needle in str(e.value), str(e.value)
    bad.write_text("")
    with pytest.raises(UserError, match="the file is empty"):
        kinetics(root=str(root), splits={"bad": "bad.csv"}, **SMALL).size("bad")
    with pytest.raises(UserError, match="needs data.root: .*--set data.root="):
        kinetics()
    with pytest.raises(UserError, match="holds none of train.csv, val.csv, test.csv"):
        kinetics(root=str(tmp_path))
    with pytest.raises(UserError, match="has no split 'val'"):
        kinetics(root=str(root), **SMALL).size("val")
    with pytest.raises(UserError, match=r"split 'x' manifest .*nope.csv not found"):
        kinetics(root=str(root), splits={"x": "nope.csv"})


def test_labels_match_loosely_and_custom_classes(layout):
    root, w = layout
    rows = [r.split(",") for r in (root / "test.csv").read_text().splitlines()[1:]]
    # folder-style labels ("Blowing_Nose") name the same class
    (root / "loose.csv").write_text("path,label\n" + "".join(f"{p},{lab.replace(' ', '_').title()}\n" for p, lab in rows))
    (root / "mine.txt").write_text("\n".join(w["classes"]) + "\n")
    ds = kinetics(root=str(root), splits={"test": "loose.csv"}, classes="mine.txt", **SMALL)
    assert ds.task.classes == tuple(w["classes"])
    ids, target, _ = collect(ds)
    assert len(ids) == 4 and target.tolist() == [w["test"]["labels"][i] for i in ids]


def test_waveform_domain(layout):
    root, _ = layout
    wv = kinetics(root=str(root), audio="waveform", frontend_pipeline="fbank128", video="none", clip_seconds=2.0)
    ft = kinetics(root=str(root), audio="fbank128", video="none", clip_seconds=2.0)
    spec = wv.specs["audio"]
    assert spec.shape == (32000,) and spec.frontend == {"pipeline": "fbank128", "stats": None}
    a, b = next(iter(wv.batches("test", 2))), next(iter(ft.batches("test", 2)))
    front = features.get_pipeline(spec.frontend["pipeline"], spec.frontend["stats"])
    assert torch.allclose(front(a.inputs["audio"]), b.inputs["audio"], atol=1e-5)
    stats = ft.feature_stats("test", limit=2)
    assert stats["n_clips"] == 2 and stats["pipeline"] == "fbank128"


def test_features_mode_with_backbone(layout, tmp_path):
    import torchvision

    root, _ = layout
    weights = tmp_path / "r18.pth"
    torch.manual_seed(0)
    torch.save({"state_dict": torchvision.models.resnet18(weights=None).state_dict()}, weights)
    ds = kinetics(root=str(root), video="features", video_backbone="resnet18", video_weights=str(weights),
                  frames=2, clip_seconds=2.0)
    assert ds.specs["video"].shape == (2, 512)
    b = next(iter(ds.batches("test", 2)))
    assert b.inputs["video"].shape == (2, 2, 512) and float(b.inputs["video"].min()) >= 0
    with pytest.raises(UserError) as e:
        kinetics(root=str(root), video="features", frames=2)
    assert "needs video_weights" in str(e.value) and "torchvision.models.resnet50" in str(e.value)
    with pytest.raises(UserError, match="video_backbone must be one of"):
        kinetics(root=str(root), video="features", video_backbone="vgg16", video_weights=str(weights))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    ds = kinetics(root=str(root), video="features", video_backbone="resnet18", video_weights=str(garbage), frames=1)
    with pytest.raises(UserError, match="cannot read video weights .*garbage.pth"):
        next(iter(ds.batches("test", 1)))


# ------------------------------------------------------------------------------------ decoding


def test_decode_frames_one_per_second(tmp_path):
    """A 5-fps video whose frame k has grey level 10*k: frame i at 1 fps is the one nearest i + 0.5 s."""
    frames = np.stack([np.full((16, 16, 3), 10 * k, np.uint8) for k in range(15)])  # 3 s
    path = tmp_path / "v.mp4"
    sl.write_mp4(path, None, frames, fps=5)
    got = cl.decode_frames(path, 5)
    assert got.shape == (5, 16, 16, 3) and got.dtype == torch.uint8
    levels = got.float().mean((1, 2, 3)).tolist()
    # windows centred at 0.5, 1.5, 2.5 s -> frames 2 or 3, 7 or 8, 12 or 13; past the end: the last
    assert abs(levels[0] - 25) <= 8 and abs(levels[1] - 75) <= 8 and abs(levels[2] - 125) <= 8
    assert levels[3] == levels[2] and levels[4] == levels[2]
    x = cl.resize_center_crop(got, 8)
    assert x.shape == (5, 3, 8, 8) and float(x.max()) <= 1
    with pytest.raises(cl.ClipError, match="no audio stream"):
        cl.decode_audio(path, 1.0)
    sl.write_wav(tmp_path / "a.wav", np.zeros(160, np.float32))
    with pytest.raises(cl.ClipError, match="no video stream"):
        cl.probe(tmp_path / "a.wav", video=True)


def test_decode_audio_resamples_and_pads(tmp_path):
    import soundfile as sf

    t = np.arange(44100) / 44100
    stereo = np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.5 * np.sin(2 * np.pi * 440 * t)], 1)
    sf.write(tmp_path / "s.flac", stereo, 44100)
    wav = cl.decode_audio(tmp_path / "s.flac", 2.0)
    assert wav.shape == (32000,) and float(wav[16100:].abs().max()) == 0.0
    spectrum = np.abs(np.fft.rfft(wav[:16000].numpy()))
    assert abs(int(spectrum.argmax()) - 440) <= 1  # 1 Hz bins over one second at 16 kHz


def test_contract_check(layout):
    from avharness.conformance import check_plugin

    root, _ = layout
    results = check_plugin("kinetics_sounds", avharness.get_registry(), kind="dataset", params={"root": str(root)})
    assert results and all(ok for _, ok, _ in results), results
