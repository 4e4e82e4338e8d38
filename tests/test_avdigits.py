"""The built-in ``avdigits`` dataset: contract, determinism, caching, provenance.

Small builds (n=200: 120/30/50) in a per-test cache folder keep these hermetic and fast; the
difficulty targets of the default settings are checked by a slow test.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

import avharness
from avharness import Batch, Dataset, UserError
from avharness_plugins.datasets.avdigits import dataset as D
from avharness_plugins.datasets.avdigits.dataset import CLASSES, build_avdigits

N = 200


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("avdigits-cache")


@pytest.fixture(scope="module")
def ds(cache):
    data = build_avdigits(seed=0, cache_dir=str(cache), n=N)
    data.manifest("train")  # build once for the module
    return data


def _all(data, split):
    batches = list(data.batches(split, 64))
    return (
        {m: torch.cat([b.inputs[m] for b in batches]) for m in ("audio", "video")},
        torch.cat([b.target for b in batches]),
        [i for b in batches for i in b.ids],
    )


def test_construction_is_cheap_and_builds_nothing(tmp_path):
    folder = tmp_path / "never-created"
    data = build_avdigits(seed=3, cache_dir=str(folder))
    assert isinstance(data, Dataset)
    assert data.task.kind == "multiclass" and data.task.classes == CLASSES
    assert data.specs["audio"].shape == (D.AUDIO_FRAMES, D.N_MELS)
    assert data.specs["audio"].bounds == (-D.AUDIO_CLIP, D.AUDIO_CLIP)
    assert data.specs["video"].shape == (4, 24, 24) and data.specs["video"].bounds == (0.0, 1.0)
    assert data.splits() == ("train", "val", "test")
    assert [data.size(s) for s in data.splits()] == [1800, 450, 750]
    assert not folder.exists()


def test_shapes_dtypes_bounds_and_ids(ds):
    for split in ds.splits():
        inputs, target, ids = _all(ds, split)
        n = ds.size(split)
        assert target.dtype == torch.int64 and target.shape == (n,)
        assert ids == [f"{split}/{i:05d}" for i in range(n)]
        for m, spec in ds.specs.items():
            x = inputs[m]
            assert x.dtype == torch.float32 and tuple(x.shape) == (n, *spec.shape)
            assert torch.isfinite(x).all()
            assert x.min() >= spec.bounds[0] and x.max() <= spec.bounds[1]
        # the features carry signal, not a constant
        assert inputs["audio"].std() > 0.5 and inputs["video"].std() > 0.1


def test_splits_are_stratified_and_disjoint(ds):
    seen = set()
    for split in ds.splits():
        _, target, ids = _all(ds, split)
        counts = Counter(target.tolist())
        assert set(counts) == set(range(10))
        assert max(counts.values()) - min(counts.values()) <= 1
        assert not seen & set(ids)
        seen |= set(ids)
    # the scans (images) of different splits are disjoint too
    scans = {s: set(ds.provenance(s)["scan"]) for s in ds.splits()}
    assert not scans["train"] & scans["test"] and not scans["train"] & scans["val"] and not scans["val"] & scans["test"]


def test_audio_and_video_labels_agree(ds):
    from sklearn.datasets import load_digits

    scan_labels = load_digits().target
    for split in ds.splits():
        _, target, _ = _all(ds, split)
        prov = ds.provenance(split)
        assert [CLASSES.index(w) for w in prov["word"]] == target.tolist()  # what eSpeak NG was asked to say
        assert scan_labels[prov["scan"]].tolist() == target.tolist()  # which handwritten digit was drawn


def test_same_seed_is_bit_identical_after_rebuild(ds, tmp_path):
    again = build_avdigits(seed=0, cache_dir=str(tmp_path), n=N)  # an empty cache: rebuilt from scratch
    for split in ds.splits():
        a_in, a_t, a_ids = _all(ds, split)
        b_in, b_t, b_ids = _all(again, split)
        assert a_ids == b_ids and torch.equal(a_t, b_t)
        for m in a_in:
            assert torch.equal(a_in[m], b_in[m]), (split, m)
        assert ds.manifest(split) == again.manifest(split)


def test_different_seed_differs(ds, cache):
    other = build_avdigits(seed=1, cache_dir=str(cache), n=N)
    for split in ds.splits():
        assert other.manifest(split) != ds.manifest(split)
    a, _, _ = _all(ds, "test")
    b, _, _ = _all(other, "test")
    assert not torch.equal(a["audio"], b["audio"]) and not torch.equal(a["video"], b["video"])


def test_manifest_tracks_the_data(ds, cache):
    assert len(ds.manifest("train")) == 64
    assert len({ds.manifest(s) for s in ds.splits()}) == 3
    noisier = build_avdigits(seed=0, cache_dir=str(cache), n=N, pixel_noise=0.3)
    assert noisier.cache_path() != ds.cache_path()
    assert all(noisier.manifest(s) != ds.manifest(s) for s in ds.splits())


def test_cache_file_is_reused(ds, cache, monkeypatch):
    path = ds.cache_path()
    assert path.exists() and path.parent.parent == cache
    assert not list(path.parent.glob("*.tmp"))  # written atomically: no leftovers

    def no_build(*a, **k):
        raise AssertionError("rebuilt although the cache holds this dataset")

    monkeypatch.setattr(D, "build", no_build)
    again = build_avdigits(seed=0, cache_dir=str(cache), n=N)
    assert again.manifest("test") == ds.manifest("test")


def test_a_damaged_cache_file_is_rebuilt(ds, tmp_path):
    data = build_avdigits(seed=0, cache_dir=str(tmp_path), n=N)
    data.cache_path().parent.mkdir(parents=True)
    data.cache_path().write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="ignoring the cache file"):
        assert data.manifest("val") == ds.manifest("val")
    assert data.cache_path().stat().st_size > 1000


def test_cache_dir_defaults_to_env(monkeypatch, tmp_path):
    monkeypatch.setenv("AVHARNESS_CACHE", str(tmp_path))
    assert build_avdigits(n=N).cache_path().is_relative_to(tmp_path)


def test_batches_shuffle_limit_and_copies(ds):
    ordered = [i for b in ds.batches("val", 7) for i in b.ids]
    g = torch.Generator().manual_seed(5)
    shuffled = [i for b in ds.batches("val", 7, shuffle=g) for i in b.ids]
    assert sorted(shuffled) == sorted(ordered) and shuffled != ordered
    g2 = torch.Generator().manual_seed(5)
    assert [i for b in ds.batches("val", 7, shuffle=g2) for i in b.ids] == shuffled
    limited = list(ds.batches("val", 4, limit=10))
    assert [len(b) for b in limited] == [4, 4, 2]
    assert [i for b in limited for i in b.ids] == ordered[:10]
    g3 = torch.Generator().manual_seed(0)
    assert sorted(i for b in ds.batches("val", 4, shuffle=g3, limit=10) for i in b.ids) == ordered[:10]

    first = next(ds.batches("val", 8))
    assert isinstance(first, Batch)
    first.inputs["audio"].fill_(123.0)  # a careless consumer...
    assert next(ds.batches("val", 8)).inputs["audio"].max() <= D.AUDIO_CLIP  # ...cannot corrupt the data


def test_info_is_json_and_records_provenance(ds):
    info = ds.info()
    json.dumps(info)
    norm = info["audio"]["normalisation"]
    assert norm["computed_on"] == "train" and len(norm["mean"]) == D.N_MELS and len(norm["std"]) == D.N_MELS
    assert all(s > 0 for s in norm["std"])
    assert info["audio"]["features"]["n_mels"] == D.N_MELS and info["audio"]["bounds"] == [-4.0, 4.0]
    assert info["knobs"]["n"] == N and info["seed"] == 0
    assert info["generator"]["espeak_ng"] and info["generator"]["torch"] == torch.__version__
    assert info["video"]["scans_per_split"]["train"] + info["video"]["scans_per_split"]["val"] \
        + info["video"]["scans_per_split"]["test"] == 1797
    # train statistics really normalise the train split (before clipping, so only roughly)
    inputs, _, _ = _all(ds, "train")
    assert abs(float(inputs["audio"].mean())) < 0.1 and 0.8 < float(inputs["audio"].std()) < 1.1


def test_bad_arguments_are_user_errors(ds):
    with pytest.raises(UserError, match="no split 'dev'"):
        ds.size("dev")
    with pytest.raises(UserError, match="batch_size"):
        next(ds.batches("train", 0))
    with pytest.raises(UserError, match="snr_db_min"):
        build_avdigits(snr_db_min=10.0, snr_db_max=0.0)
    with pytest.raises(UserError, match="n must be at least"):
        build_avdigits(n=10)
    with pytest.raises(UserError, match="occlusion"):
        build_avdigits(occlusion=1.5)


def test_registered_through_the_entry_point():
    registry = avharness.plugins.load_registry()
    entry = registry.entry("dataset", "avdigits")
    assert entry.factory is build_avdigits and entry.dist == "avharness"


@pytest.mark.slow
def test_default_difficulty_targets(tmp_path):
    """Quickstart-style training (standard: adam, lr 1e-3, 10 epochs, batch 64): each modality alone
    reaches 75-95 % clean test accuracy and the best fused model beats the best uni-modal one by 3+."""
    from avharness import FitContext
    from avharness_plugins.defenses.standard import split_accuracy, standard
    from avharness_plugins.models.small import build_audio_cnn, build_early_fusion, build_late_fusion, build_video_cnn

    data = build_avdigits(seed=0, cache_dir=str(tmp_path))
    acc = {}
    for name, factory in [("audio", build_audio_cnn), ("video", build_video_cnn),
                          ("early", build_early_fusion), ("late", build_late_fusion)]:
        torch.manual_seed(0)
        model = factory(data.task, data.specs)
        standard().fit(model, data, FitContext(torch.device("cpu"), 0))
        acc[name] = split_accuracy(model, data, "test", "cpu")[0]
    assert 0.75 <= acc["audio"] <= 0.95, acc
    assert 0.75 <= acc["video"] <= 0.95, acc
    assert max(acc["early"], acc["late"]) >= max(acc["audio"], acc["video"]) + 0.03, acc


def test_speech_is_reproducible_and_refuses_unknown_voices():
    from avharness_plugins.datasets.avdigits import speech
    requests = [speech.Utterance("seven", "en-us+f3", 150, 50, 50, seed=7),
                speech.Utterance("two", "en+whisper", 200, 30, 60, seed=8)]
    a, facts = speech.synthesize_many(requests)
    b, _ = speech.synthesize_many(requests)  # another worker process, another clock second
    assert facts["sample_rate"] == 22050 and facts["espeak_ng"]
    assert all(x.dtype == np.int16 and len(x) > 2000 and np.array_equal(x, y) for x, y in zip(a, b))
    with pytest.raises(speech.SpeechUnavailable, match="no voice 'nope'"):
        speech.synthesize("one", "nope")


def test_missing_espeak_is_a_clear_error(monkeypatch):
    import sys

    from avharness_plugins.datasets.avdigits import speech
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)  # makes the import fail
    with pytest.raises(UserError, match="pip install espeakng-loader"):
        speech.synthesize("one")
