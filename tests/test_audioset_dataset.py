"""The ``audioset`` dataset plugin on tiny generated folders in each real layout, then on the real files."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import toy

import avharness
from avharness import UserError
from avharness_plugins.datasets import features
from avharness_plugins.datasets.clips import decode as cl
from avharness_plugins.testing import layouts as sl


def audioset(**params):
    return avharness.get_registry().get("dataset", "audioset")(**params)


def multi_hot(mids, classes):
    index = {mid: i for i, (mid, _) in enumerate(classes)}
    y = torch.zeros(len(classes))
    for m in mids:
        y[index[m]] = 1
    return y


def collect(ds, split="eval", batch_size=3, **kw):
    return toy.collect(ds, split, batch_size, **kw)


@pytest.fixture
def csv_layout(tmp_path):
    root = tmp_path / "audioset"
    return root, sl.write_audioset_csv_layout(root, 6, n_classes=4, missing=2, video_features=True, feature_dim=32,
                                              video_seconds=3)


# ------------------------------------------------------------------------------------ csv layout


def test_csv_layout_specs_ids_labels(csv_layout):
    root, w = csv_layout
    ds = audioset(root=str(root), clip_seconds=1.0)
    assert ds.task.kind == "multilabel" and ds.task.classes == tuple(name for _, name in w["classes"])
    assert set(ds.specs) == {"audio"}
    spec = ds.specs["audio"]
    assert spec.shape == (400, 64) and spec.bounds == (-100.0, float("inf")) and spec.frontend is None
    assert ds.splits() == ("eval",)
    expected = [i for i in w["ids"] if i not in w["missing"]]
    assert ds.size("eval") == 6
    ids, target, inputs = collect(ds)
    assert ids == expected  # the CSV's order, missing clips left out
    for sid, y in zip(ids, target):
        assert torch.equal(y, multi_hot(w["labels"][sid], w["classes"]))
    x = inputs["audio"]
    assert x.shape == (6, 400, 64) and x.dtype == torch.float32 and float(x.min()) >= spec.bounds[0]
    info = ds.info()["splits"]["eval"]
    assert (info["listed"], info["usable"], info["missing"]) == (8, 6, 2)
    assert sorted(m["id"] for m in info["missing_items"]) == sorted(w["missing"])
    assert all("no audio file" in m["reason"] for m in info["missing_items"])
    json.dumps(ds.info())  # the report stores it as JSON


def test_features_match_pipeline_on_decoded_wav(csv_layout):
    root, w = csv_layout
    ds = audioset(root=str(root), audio="fbank128", clip_seconds=1.0)
    assert ds.specs["audio"].shape == (1024, 128)
    b = next(iter(ds.batches("eval", 2)))
    wav = torch.stack([cl.decode_audio(w["paths"]["wav"][i], 1.0) for i in b.ids])
    assert torch.allclose(b.inputs["audio"], features.get_pipeline("fbank128")(wav), atol=1e-5)


def test_limit_and_shuffle_are_deterministic(csv_layout):
    root, _ = csv_layout
    ds = audioset(root=str(root), clip_seconds=1.0)
    first4 = collect(ds)[0][:4]
    assert collect(ds, limit=4)[0] == first4
    a = collect(ds, limit=4, shuffle=torch.Generator().manual_seed(3))
    b = collect(ds, limit=4, shuffle=torch.Generator().manual_seed(3))
    assert a[0] == b[0] and sorted(a[0]) == sorted(first4) and torch.equal(a[2]["audio"], b[2]["audio"])
    again = audioset(root=str(root), clip_seconds=1.0)
    assert torch.equal(collect(again)[2]["audio"], collect(ds)[2]["audio"])
    with pytest.raises(UserError, match="batch_size must be a positive integer"):
        next(iter(ds.batches("eval", 0)))


def test_manifest_stable_and_changes_with_the_data(csv_layout):
    root, w = csv_layout
    m0 = audioset(root=str(root)).manifest("eval")
    assert audioset(root=str(root)).manifest("eval") == m0
    # other features are other contents
    assert audioset(root=str(root), audio="fbank128").manifest("eval") != m0
    clip = w["paths"]["wav"][next(i for i in w["ids"] if i not in w["missing"])]
    sl.write_wav(clip, sl.class_tone([3], 1.5, np.random.default_rng(9)))  # a rewritten clip
    m1 = audioset(root=str(root)).manifest("eval")
    assert m1 != m0
    clip.unlink()  # a clip gone: one more missing
    ds = audioset(root=str(root))
    assert ds.manifest("eval") not in (m0, m1) and ds.size("eval") == 5


def test_missing_error_policy(csv_layout):
    root, w = csv_layout
    with pytest.raises(UserError) as e:
        audioset(root=str(root), missing="error").size("eval")
    msg = str(e.value)
    assert "2 of 8 clips are missing" in msg and w["missing"][0] in msg and "missing: skip" in msg and "\n" not in msg


def test_all_missing_is_an_error(tmp_path):
    root = tmp_path / "a"
    sl.write_audioset_csv_layout(root, 2)
    for f in (root / "wav").iterdir():
        f.unlink()
    with pytest.raises(UserError, match="has no usable clip: all 2 listed"):
        audioset(root=str(root)).size("eval")


def test_corrupt_clip_by_check(csv_layout):
    root, w = csv_layout
    bad = next(i for i in w["ids"] if i not in w["missing"])
    w["paths"]["wav"][bad].write_bytes(b"RIFF\x00\x00not a wav at all" * 10)
    for check in ("header", "decode"):
        ds = audioset(root=str(root), check=check)
        items = {m["id"]: m["reason"] for m in ds.info()["splits"]["eval"]["missing_items"]}
        assert "unreadable audio" in items[bad] and ds.size("eval") == 5
    # found only while decoding: a clear error naming the clip, never a silently dropped sample
    ds = audioset(root=str(root), check="exists")
    assert ds.size("eval") == 6
    with pytest.raises(UserError) as e:
        collect(ds)
    assert bad in str(e.value) and "check: decode" in str(e.value)


def test_user_errors(tmp_path, csv_layout):
    root, w = csv_layout
    with pytest.raises(UserError) as e:
        audioset()
    assert "needs data.root" in str(e.value) and "--set data.root=" in str(e.value) and "class_labels_indices.csv" in str(e.value)
    with pytest.raises(UserError, match="does not exist or is not a folder"):
        audioset(root=str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="holds none of eval_segments.csv"):
        audioset(root=str(tmp_path))
    ds = audioset(root=str(root))
    with pytest.raises(UserError, match="has no split 'test'; it has: eval"):
        ds.size("test")
    with pytest.raises(UserError, match="has no split 'train'"):
        next(iter(ds.batches("train", 2)))
    with pytest.raises(UserError, match=r"split 'train' file .*balanced_train_segments.csv not found"):
        audioset(root=str(root), splits={"eval": "eval_segments.csv", "train": "balanced_train_segments.csv"})
    with pytest.raises(UserError, match="audio must be one of"):
        audioset(root=str(root), audio="mfcc")
    with pytest.raises(UserError, match="remap does not apply to the csv layout"):
        audioset(root=str(root), remap={"/a/": "/b/"})
    # a malformed segment CSV: the message names the file and the line
    lines = w["csv"].read_text().splitlines()
    lines[4] = ", ".join(lines[4].split(", ")[:3])  # drop the label field of line 5
    w["csv"].write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError) as e:
        audioset(root=str(root)).size("eval")
    assert f"{w['csv']}:5:" in str(e.value) and "expected 4 fields" in str(e.value)
    (root / "class_labels_indices.csv").unlink()
    with pytest.raises(UserError, match="class list .*class_labels_indices.csv not found"):
        audioset(root=str(root))


def test_unknown_labels_policy(tmp_path):
    root = tmp_path / "a"
    w = sl.write_audioset_csv_layout(root, 3, n_classes=4)
    text = w["csv"].read_text().replace(w["labels"][w["ids"][0]][0], "/m/unknown", 1)
    w["csv"].write_text(text)
    with pytest.raises(UserError, match=r"label '/m/unknown' is not in the class list .*unknown_labels: skip"):
        audioset(root=str(root)).size("eval")
    ds = audioset(root=str(root), unknown_labels="skip")
    assert ds.size("eval") == 3
    assert ds.info()["splits"]["eval"]["unknown_labels_skipped"] == {"/m/unknown": 1}


def test_suite_without_root_says_what_to_provide(tmp_path):
    from avharness.components import check_plugins
    from avharness.suite import load_suite

    suite = tmp_path / "s.yaml"
    suite.write_text("schema: avharness/suite@1\nname: s\nversion: 1\nseed: 0\ndata: {plugin: audioset}\n"
                     "eval: {split: eval, batch_size: 2}\nmodels:\n  - {name: m, plugin: audio_cnn}\n"
                     "defenses:\n  - {plugin: standard}\nattacks:\n  - {plugin: fgsm}\n"
                     "threats:\n  - {name: a, audio: {norm: linf, eps: [0.1]}}\nmetrics: [accuracy]\n")
    registry = avharness.get_registry()
    with pytest.raises(UserError) as e:
        check_plugins(load_suite(suite), registry)
    assert f"{suite}:5" in str(e.value) and "--set data.root=/path/to/audioset" in str(e.value)
    root = tmp_path / "a"
    sl.write_audioset_csv_layout(root, 2)
    parts = check_plugins(load_suite(suite, [f"data.root={root}"]), registry)
    assert parts.dataset.size("eval") == 2


# ------------------------------------------------------------------------------------ waveform domain


def test_waveform_domain_has_frontend_matching_features(csv_layout, tmp_path):
    root, _ = csv_layout
    for name in ("logmel64", "fbank128"):
        feats = audioset(root=str(root), audio=name, clip_seconds=1.0)
        stats = feats.feature_stats("eval")
        path = tmp_path / f"{name}.json"
        features.save_stats(stats, path)
        f_ds = audioset(root=str(root), audio=name, stats=str(path), clip_seconds=1.0)
        w_ds = audioset(root=str(root), audio="waveform", frontend_pipeline=name, stats=str(path), clip_seconds=1.0)
        spec = w_ds.specs["audio"]
        assert spec.shape == (16000,) and spec.bounds == (-1.0, 1.0) and spec.units.startswith("waveform")
        assert spec.frontend["pipeline"] == name and spec.frontend["stats"]["mean"] == stats["mean"]
        wb = next(iter(w_ds.batches("eval", 3)))
        fb = next(iter(f_ds.batches("eval", 3)))
        assert wb.ids == fb.ids and float(wb.inputs["audio"].abs().max()) <= 1.0
        front = features.get_pipeline(spec.frontend["pipeline"], spec.frontend["stats"])
        assert torch.allclose(front(wb.inputs["audio"]), fb.inputs["audio"], atol=1e-5)
        # normalised floor: (floor - mean) / (2 std), and the features respect it
        lo = f_ds.specs["audio"].bounds[0]
        floor = -100.0 if name == "logmel64" else float(np.log(np.finfo(np.float32).eps))
        assert lo == pytest.approx((floor - stats["mean"]) / (2 * stats["std"]), rel=1e-6)
        assert float(fb.inputs["audio"].min()) >= lo


def test_feature_stats_match_compute_stats(csv_layout):
    root, w = csv_layout
    ds = audioset(root=str(root), clip_seconds=1.0)
    got = ds.feature_stats("eval", limit=4)
    ids = collect(ds, limit=4)[0]
    want = features.compute_stats(features.get_pipeline("logmel64"),
                                  [torch.stack([cl.decode_audio(w["paths"]["wav"][i], 1.0) for i in ids])])
    assert got["n_clips"] == 4 and got["pipeline"] == "logmel64"
    assert got["mean"] == pytest.approx(want["mean"], rel=1e-9) and got["std"] == pytest.approx(want["std"], rel=1e-9)
    assert got["source"]["split"] == "eval"


def test_tiny_model_forward_over_batches(csv_layout):
    root, _ = csv_layout
    ds = audioset(root=str(root), clip_seconds=1.0, video="features")
    torch.manual_seed(0)
    width = sum(int(np.prod(spec.shape)) for spec in ds.specs.values())
    head = torch.nn.Linear(width, ds.task.num_classes)
    seen = 0
    for b in ds.batches("eval", 4):
        x = torch.cat([b.inputs["audio"].flatten(1) / 100, b.inputs["video"].flatten(1)], 1)
        loss = ds.task.loss(head(x), b.target).mean()
        loss.backward()
        assert torch.isfinite(loss)
        seen += len(b)
    assert seen == ds.size("eval") and head.weight.grad is not None


# ------------------------------------------------------------------------------------ video


def test_video_features_from_npy(csv_layout):
    root, w = csv_layout
    ds = audioset(root=str(root), video="features", video_seconds=2, clip_seconds=1.0)
    spec = ds.specs["video"]
    assert spec.shape == (2, 32) and spec.bounds == (0.0, float("inf"))
    ids, _, inputs = collect(ds)
    for i, sid in enumerate(ids):
        assert torch.equal(inputs["video"][i], torch.from_numpy(np.load(w["paths"]["npy"][sid]))[:2])
    # longer than the files: the last second repeats
    ds5 = audioset(root=str(root), video="features", video_seconds=5, clip_seconds=1.0)
    v = next(iter(ds5.batches("eval", 1))).inputs["video"][0]
    assert torch.equal(v[3], v[2]) and torch.equal(v[4], v[2])
    # a clip without its video features is missing
    gone = ids[0]
    w["paths"]["npy"][gone].unlink()
    ds = audioset(root=str(root), video="features", clip_seconds=1.0)
    reasons = {m["id"]: m["reason"] for m in ds.info()["splits"]["eval"]["missing_items"]}
    assert ds.size("eval") == 5 and "no video file" in reasons[gone]


def test_video_features_out_of_bounds_is_an_error(tmp_path):
    root = tmp_path / "a"
    w = sl.write_audioset_csv_layout(root, 2, video_features=True, feature_dim=8, video_seconds=2)
    np.save(w["paths"]["npy"][w["ids"][0]], -np.ones((2, 8), np.float32))
    with pytest.raises(UserError, match="outside the declared bounds .* set video_bounds"):
        collect(audioset(root=str(root), video="features"))
    assert len(collect(audioset(root=str(root), video="features", video_bounds=["-inf", "inf"]))[0]) == 2


def test_video_decode_with_backbone(tmp_path):
    import torchvision

    root = tmp_path / "a"
    w = sl.write_audioset_csv_layout(root, 3, mp4=True, seconds=2.0)
    weights = tmp_path / "r18.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    (root / "video" / f"{w['ids'][2]}.mp4").unlink()  # no video for one clip: missing
    ds = audioset(root=str(root), video="decode", video_backbone="resnet18", video_weights=str(weights),
                  video_seconds=2, clip_seconds=2.0)
    assert ds.specs["video"].shape == (2, 512) and ds.specs["video"].bounds == (0.0, float("inf"))
    ids, _, inputs = collect(ds)
    assert ids == w["ids"][:2] and inputs["video"].shape == (2, 2, 512) and float(inputs["video"].min()) >= 0
    info = ds.info()
    assert info["video"]["weights_sha256"] == __import__("hashlib").sha256(weights.read_bytes()).hexdigest()
    assert "no video file" in info["splits"]["eval"]["missing_items"][0]["reason"]
    # audio decoded from the same mp4s (AAC) matches the wav clips
    mp4 = audioset(root=str(root), clips="video", clip_seconds=2.0, audio="waveform")
    wav = audioset(root=str(root), clip_seconds=2.0, audio="waveform")
    a, b = collect(mp4)[2]["audio"], collect(wav, limit=2)[2]["audio"]
    for x, y in zip(a, b):
        assert np.corrcoef(x[1000:30000], y[1000:30000])[0, 1] > 0.99
    # missing or wrong weights: a UserError naming the file and what to provide
    with pytest.raises(UserError) as e:
        audioset(root=str(root), video="decode", video_backbone="resnet18", video_weights=str(tmp_path / "none.pth"))
    assert "none.pth does not exist" in str(e.value) and "torchvision.models.resnet18" in str(e.value)
    with pytest.raises(UserError, match="needs video_weights: a local weights file"):
        audioset(root=str(root), video="decode")
    bad = audioset(root=str(root), video="decode", video_backbone="resnet34", video_weights=str(weights),
                   video_seconds=1, clip_seconds=2.0)
    with pytest.raises(UserError, match="do not fit torchvision's resnet34"):
        collect(bad)


# ------------------------------------------------------------------------------------ json layout


def test_json_layout_with_remap(tmp_path):
    root = tmp_path / "a"
    w = sl.write_audioset_json_layout(root, 4, missing=1)
    ds = audioset(root=str(root), remap=w["remap"], clip_seconds=1.0)
    assert ds.layout == "json" and ds.size("eval") == 4
    ids, target, _ = collect(ds)
    assert ids == w["ids"][:4]
    for sid, y in zip(ids, target):
        assert torch.equal(y, multi_hot(w["labels"][sid], w["classes"]))
    assert [m["id"] for m in ds.info()["splits"]["eval"]["missing_items"]] == w["missing"]
    assert ds.info()["files"]["remap"] == w["remap"]
    with pytest.raises(UserError, match="has no usable clip"):  # without the remap nothing is found
        audioset(root=str(root)).size("eval")
    with pytest.raises(UserError, match="clips does not apply to the json layout"):
        audioset(root=str(root), clips="wav")
    bad = root / "bad.json"
    bad.write_text('{"data": [\n{"wav": "x.wav"}\n]}')
    with pytest.raises(UserError, match=r"bad\.json: data\[0\] has no 'labels' key"):
        audioset(root=str(root), splits={"eval": "bad.json"}).size("eval")


# ------------------------------------------------------------------------------------ hdf5 layout


def test_hdf5_layout_streams_slices(tmp_path):
    import h5py

    root = tmp_path / "a"
    sl.write_class_labels(root / "class_labels_indices.csv", 5)
    sl.write_audioset_hdf5(root / "data.h5", 37, n_frames=20, n_bins=8, video=True, video_shape=(4, 6), n_classes=5,
                           chunk=10)
    ds = audioset(root=str(root), video="features")
    assert ds.layout == "hdf5" and ds.size("eval") == 37
    assert ds.specs["audio"].shape == (20, 8) and ds.specs["audio"].bounds == (float("-inf"), float("inf"))
    assert ds.specs["video"].shape == (4, 6)
    ids, target, inputs = collect(ds, batch_size=8)
    with h5py.File(root / "data.h5") as f:
        g = f["eval/data"]
        assert torch.equal(inputs["audio"], torch.from_numpy(g["feat_a"][:]))
        assert torch.equal(inputs["video"], torch.from_numpy(g["feat_v"][:]))
        assert torch.equal(target, torch.from_numpy(g["labels"][:]))
    assert ids == [f"clip{i:06d}" for i in range(37)]
    gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    a, b = collect(ds, batch_size=8, shuffle=gen(), limit=20), collect(ds, batch_size=8, shuffle=gen(), limit=20)
    assert a[0] == b[0] and sorted(a[0]) == ids[:20] and a[0] != ids[:20]
    order = [ids.index(i) for i in a[0]]
    assert torch.equal(a[2]["audio"], inputs["audio"][order]) and torch.equal(a[1], target[order])
    # a pickled copy (e.g. sent to a worker) reopens the file itself
    copy = pickle.loads(pickle.dumps(ds))
    assert torch.equal(next(iter(copy.batches("eval", 5))).inputs["audio"], inputs["audio"][:5])
    m0 = ds.manifest("eval")
    assert audioset(root=str(root), video="features").manifest("eval") == m0
    assert audioset(root=str(root)).manifest("eval") != m0  # audio only: other contents
    with pytest.raises(UserError, match="holds precomputed features"):
        ds.feature_stats("eval")
    ds.close(), copy.close()  # h5py cannot rewrite a file this process holds open
    sl.write_audioset_hdf5(root / "data.h5", 37, n_frames=20, n_bins=8, video=True, video_shape=(4, 6), n_classes=5,
                           seed=1)
    os.utime(root / "data.h5", ns=(1, 1))
    assert audioset(root=str(root), video="features").manifest("eval") != m0


def test_hdf5_groups_ids_bounds_and_errors(tmp_path):
    root = tmp_path / "a"
    sl.write_class_labels(root / "class_labels_indices.csv", 3)
    sl.write_audioset_hdf5(root / "eval.h5", 5, n_frames=4, n_bins=2, n_classes=3, group="/", ids=False)
    ds = audioset(root=str(root), splits={"eval": "eval.h5"})
    assert collect(ds)[0] == [f"eval/{i:06d}" for i in range(5)]
    with pytest.raises(UserError, match="video: features needs feat_v"):
        audioset(root=str(root), splits={"eval": "eval.h5"}, video="features")
    with pytest.raises(UserError, match="has no group 'valid/data'"):
        audioset(root=str(root), splits={"eval": "eval.h5:valid/data"})
    with pytest.raises(UserError, match="the hdf5 layout stores audio features"):
        audioset(root=str(root), splits={"eval": "eval.h5"}, audio="logmel64")
    with pytest.raises(UserError, match="outside audio_bounds"):
        collect(audioset(root=str(root), splits={"eval": "eval.h5"}, audio_bounds=[-0.5, 0.5]))
    sl.write_class_labels(root / "class_labels_indices.csv", 4)
    with pytest.raises(UserError, match="labels has shape \\[5, 3\\] but the class list"):
        audioset(root=str(root), splits={"eval": "eval.h5"})


# ------------------------------------------------------------------------------------ real data


def _real_root(tmp_path: Path, shared: Path) -> Path:
    root = tmp_path / "real"
    root.mkdir()
    (root / "class_labels_indices.csv").symlink_to(shared / "class_labels_indices.csv")
    (root / "wav").symlink_to(shared / "wav")
    lines = (shared / "eval_segments.csv").read_text().splitlines()
    keep = lines[:3] + [ln for ln in lines if ln.startswith("--BfvyPmVMo,")]
    (root / "eval_segments.csv").write_text("\n".join(keep) + "\n")
    return root


def test_real_clip_hammer_both_pipelines(tmp_path, shared_audioset):
    root = _real_root(tmp_path, shared_audioset)
    for name, shape in (("logmel64", (400, 64)), ("fbank128", (1024, 128))):
        ds = audioset(root=str(root), audio=name)
        assert ds.task.num_classes == 527 and ds.size("eval") == 1
        b = next(iter(ds.batches("eval", 1)))
        assert b.ids == ["--BfvyPmVMo"] and b.inputs["audio"].shape == (1, *shape)
        assert torch.isfinite(b.inputs["audio"]).all() and float(b.inputs["audio"].std()) > 0
        present = [ds.task.classes[i] for i in torch.nonzero(b.target[0]).flatten().tolist()]
        assert present == ["Hammer"]
        wav = features.load_wav(shared_audioset / "wav" / "--BfvyPmVMo.wav")
        assert torch.allclose(b.inputs["audio"], features.get_pipeline(name)(wav.unsqueeze(0)), atol=1e-4)


def test_real_json_manifest_remap(tmp_path, shared_audioset):
    root = tmp_path / "real"
    root.mkdir()
    for name in ("class_labels_indices.csv", "audioset_eval_data.json"):
        (root / name).symlink_to(shared_audioset / name)
    remap = {"/local/slurm-12056603/local/audio/eval_wav/": str(shared_audioset / "wav") + "/"}
    ds = audioset(root=str(root), remap=remap)
    listed = len(json.loads((shared_audioset / "audioset_eval_data.json").read_text())["data"])
    assert ds.size("eval") == 1
    info = ds.info()["splits"]["eval"]
    assert info["listed"] == listed and info["missing"] == listed - 1 and len(info["missing_items"]) == listed - 1
    assert info["missing_by_reason"] == {"no audio file": listed - 1}
    b = next(iter(ds.batches("eval", 4)))
    assert b.ids == ["--BfvyPmVMo"] and ds.task.classes[int(b.target[0].argmax())] == "Hammer"
    with pytest.raises(UserError, match=f"{listed - 1} of {listed} clips are missing"):
        audioset(root=str(root), remap=remap, missing="error").size("eval")


def test_real_segment_csvs_parse(tmp_path, shared_audioset):
    """The real eval and balanced-train CSVs list thousands of clips; only one is here (skip works)."""
    root = tmp_path / "real"
    root.mkdir()
    for name in ("class_labels_indices.csv", "eval_segments.csv", "balanced_train_segments.csv"):
        (root / name).symlink_to(shared_audioset / name)
    (root / "wav").symlink_to(shared_audioset / "wav")
    ds = audioset(root=str(root), splits={"eval": "eval_segments.csv"})
    info = ds.info()["splits"]["eval"]
    assert info["listed"] == 20371 and info["usable"] == 1
    with pytest.raises(UserError, match="split 'train' .* has no usable clip"):
        audioset(root=str(root), splits={"eval": "eval_segments.csv", "train": "balanced_train_segments.csv"}).size("train")
    shutil.rmtree(root)


def test_writers_are_deterministic(tmp_path):
    a = sl.write_audioset_csv_layout(tmp_path / "a", 3, seed=4, video_features=True, feature_dim=8, video_seconds=2)
    b = sl.write_audioset_csv_layout(tmp_path / "b", 3, seed=4, video_features=True, feature_dim=8, video_seconds=2)
    assert a["ids"] == b["ids"] and a["csv"].read_text() == b["csv"].read_text()
    for kind in ("wav", "npy"):
        for sid, p in a["paths"][kind].items():
            assert p.read_bytes() == b["paths"][kind][sid].read_bytes()
    assert sl.write_audioset_csv_layout(tmp_path / "c", 3, seed=5)["ids"] != a["ids"]
    lines = a["csv"].read_text().splitlines()
    assert lines[0].startswith("# Segments csv created") and lines[2] == "# YTID, start_seconds, end_seconds, positive_labels"
    assert lines[3].count('"') == 2  # the label list is quoted
    h1 = sl.write_audioset_hdf5(tmp_path / "1.h5", 30, n_frames=4, n_bins=2, n_classes=3, chunk=7)
    h2 = sl.write_audioset_hdf5(tmp_path / "2.h5", 30, n_frames=4, n_bins=2, n_classes=3, chunk=7)
    import h5py

    with h5py.File(h1["path"]) as f1, h5py.File(h2["path"]) as f2:
        for k in ("feat_a", "labels"):
            assert np.array_equal(f1[f"eval/data/{k}"][:], f2[f"eval/data/{k}"][:])
        assert f1["eval/data/ids"][3].decode() == h1["id_pattern"].format(3)


def test_contract_check(csv_layout):
    from avharness.conformance import check_plugin

    root, _ = csv_layout
    results = check_plugin("audioset", avharness.get_registry(), kind="dataset", params={"root": str(root)})
    assert results and all(ok for _, ok, _ in results), results


def test_video_embeddings_are_cached_on_disk(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("AVHARNESS_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "a"
    sl.write_audioset_csv_layout(root, 2, mp4=True, seconds=2.0)
    weights = tmp_path / "r18.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    params = dict(root=str(root), video="decode", video_backbone="resnet18", video_weights=str(weights),
                  video_seconds=2, clip_seconds=2.0)
    first = collect(audioset(**params))[2]["video"]
    files = sorted((tmp_path / "cache" / "video_embeddings").rglob("*.npy"))
    assert len(files) == 2
    ds = audioset(**params)
    ds.video.embed = lambda frames: pytest.fail("a cached clip was embedded again")
    assert torch.equal(collect(ds)[2]["video"], first)
    # other weights are other embeddings: a new cache entry, never the stale one
    torch.manual_seed(1)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    assert not torch.equal(collect(audioset(**params))[2]["video"], first)
    assert len(list((tmp_path / "cache" / "video_embeddings").rglob("*.npy"))) == 4
    # off: nothing written, same numbers
    off = tmp_path / "off"
    monkeypatch.setenv("AVHARNESS_CACHE", str(off))
    collect(audioset(**params, video_cache=False))
    assert not off.exists()


def test_decoding_threads_and_prefetch_change_nothing(csv_layout):
    root, _ = csv_layout
    one = collect(audioset(root=str(root), video="features", workers=1), batch_size=2)
    many = collect(audioset(root=str(root), video="features", workers=4), batch_size=2)
    assert one[0] == many[0] and torch.equal(one[1], many[1])
    assert all(torch.equal(one[2][k], many[2][k]) for k in one[2])
    with pytest.raises(UserError, match="workers"):
        audioset(root=str(root), workers=0)
