"""AudioSet metadata parsers: tiny fixture files for every parser (good and malformed), then the real files."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from avharness.errors import UserError
from avharness_plugins.datasets.audioset.meta import (
    Segment,
    find_clips,
    multi_hot,
    read_labels,
    read_manifest,
    read_segments,
)

LABELS = 'index,mid,display_name\n0,/m/09x0r,"Speech"\n1,/m/05zppz,"Male speech, man speaking"\n2,/m/03l9g,"Hammer"\n'
SEGMENTS = (
    "# Segments csv created Sun Mar  5 10:54:25 2017\n"
    "# num_ytids=3, num_segs=3, num_unique_labels=3, num_positive_labels=4\n"
    "# YTID, start_seconds, end_seconds, positive_labels\n"
    '--4gqARaEJE, 0.000, 10.000, "/m/09x0r,/m/05zppz"\n'
    '--BfvyPmVMo, 20.000, 30.000, "/m/03l9g"\n'
    '-0Gj8-vB1q4, 30.000, 40.000, "/m/09x0r"\n'
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# ------------------------------------------------------------------------------------------ labels


def test_read_labels_tiny(tmp_path):
    lm = read_labels(write(tmp_path, "labels.csv", LABELS))
    assert len(lm) == 3
    assert lm.mids == ("/m/09x0r", "/m/05zppz", "/m/03l9g")
    assert lm.name("/m/05zppz") == "Male speech, man speaking"
    assert lm.index("/m/03l9g") == 2 and lm.mid(2) == "/m/03l9g"
    assert "/m/03l9g" in lm and "/m/nope" not in lm


def test_read_labels_any_row_order(tmp_path):
    lm = read_labels(write(tmp_path, "l.csv", "index,mid,display_name\n1,/m/b,B\n0,/m/a,A\n"))
    assert lm.mids == ("/m/a", "/m/b") and lm.names == ("A", "B")


@pytest.mark.parametrize(
    "body, line, needle",
    [
        ("0,/m/a,A\n0,/m/b,B\n", 3, "duplicate class index 0"),
        ("0,/m/a,A\n1,/m/a,B\n", 3, "duplicate mid '/m/a'"),
        ("0,/m/a,A\n1,/m/b,Male speech, man speaking\n", 3, "expected 3 fields"),
        ("0,/m/a,A\nx,/m/b,B\n", 3, "not an integer"),
        ("0,/m/a,A\n2,/m/b,B\n", 3, "without gaps"),
    ],
)
def test_read_labels_malformed(tmp_path, body, line, needle):
    p = write(tmp_path, "bad.csv", "index,mid,display_name\n" + body)
    with pytest.raises(UserError) as e:
        read_labels(p)
    msg = str(e.value)
    assert f"{p}:{line}:" in msg and needle in msg and "\n" not in msg


def test_read_labels_bad_header_and_missing(tmp_path):
    p = write(tmp_path, "h.csv", "idx,mid,name\n0,/m/a,A\n")
    with pytest.raises(UserError, match=r"h\.csv:1: expected the header"):
        read_labels(p)
    with pytest.raises(UserError, match="does not exist"):
        read_labels(tmp_path / "nope.csv")


# ---------------------------------------------------------------------------------------- segments


def test_read_segments_tiny(tmp_path):
    segs = read_segments(write(tmp_path, "seg.csv", SEGMENTS + "\n"))
    assert segs == [
        Segment("--4gqARaEJE", 0.0, 10.0, ("/m/09x0r", "/m/05zppz")),
        Segment("--BfvyPmVMo", 20.0, 30.0, ("/m/03l9g",)),
        Segment("-0Gj8-vB1q4", 30.0, 40.0, ("/m/09x0r",)),
    ]


def test_read_segments_without_spaces(tmp_path):
    segs = read_segments(write(tmp_path, "s.csv", 'abc,1.5,9,"/m/a, /m/b"\n'))
    assert segs == [Segment("abc", 1.5, 9.0, ("/m/a", "/m/b"))]


@pytest.mark.parametrize(
    "bad, needle",
    [
        ("--BfvyPmVMo, 20.000, 30.000, /m/03l9g,/m/09x0r", "expected 4 fields"),
        ("--BfvyPmVMo, 20.000, 30.000", "expected 4 fields"),
        ("--BfvyPmVMo, twenty, 30.000, \"/m/03l9g\"", "not numbers"),
        ("--BfvyPmVMo, 30.000, 20.000, \"/m/03l9g\"", "start < end"),
        ("--BfvyPmVMo, 20.000, 30.000, \"\"", "no labels"),
    ],
)
def test_read_segments_malformed(tmp_path, bad, needle):
    lines = SEGMENTS.splitlines()
    lines.insert(4, bad)  # becomes line 5
    p = write(tmp_path, "seg.csv", "\n".join(lines) + "\n")
    with pytest.raises(UserError) as e:
        read_segments(p)
    msg = str(e.value)
    assert f"{p}:5:" in msg and needle in msg and "\n" not in msg


# ---------------------------------------------------------------------------------------- manifest


def manifest(tmp_path: Path, doc) -> Path:
    return write(tmp_path, "m.json", json.dumps(doc))


def test_read_manifest_and_remap(tmp_path):
    doc = {"data": [
        {"wav": "/old/cluster/eval/a.wav", "labels": "/m/09x0r,/m/05zppz"},
        {"wav": "/elsewhere/b.wav", "labels": "/m/03l9g"},
    ]}
    p = manifest(tmp_path, doc)
    entries = read_manifest(p)
    assert entries[0].wav == Path("/old/cluster/eval/a.wav") and entries[0].mids == ("/m/09x0r", "/m/05zppz")
    remapped = read_manifest(p, {"/old/": "/x/", "/old/cluster/": "/data/audioset/"})
    assert remapped[0].wav == Path("/data/audioset/eval/a.wav")  # longest prefix wins
    assert remapped[1].wav == Path("/elsewhere/b.wav") and remapped[1].mids == ("/m/03l9g",)


@pytest.mark.parametrize(
    "doc, needle",
    [
        ({"items": []}, "'data'"),
        ([1, 2], "'data'"),
        ({"data": {"wav": "a"}}, "must be a list"),
        ({"data": [{"wav": "/a.wav", "labels": "/m/a"}, {"wav": "/b.wav"}]}, "data[1] has no 'labels'"),
        ({"data": [{"wav": 3, "labels": "/m/a"}]}, "data[0].wav must be a non-empty string"),
        ({"data": ["x"]}, "data[0] must be an object"),
    ],
)
def test_read_manifest_malformed(tmp_path, doc, needle):
    p = manifest(tmp_path, doc)
    with pytest.raises(UserError) as e:
        read_manifest(p)
    assert str(p) in str(e.value) and needle in str(e.value)


def test_read_manifest_bad_json_and_remap(tmp_path):
    p = write(tmp_path, "m.json", '{"data": [\n  {"wav": "a"\n')
    with pytest.raises(UserError, match=r"m\.json:\d+: not valid json"):
        read_manifest(p)
    good = manifest(tmp_path, {"data": []})
    assert read_manifest(good) == []
    with pytest.raises(UserError, match="empty prefix"):
        read_manifest(good, {"": "/x/"})


# --------------------------------------------------------------------------------------- multi-hot


def test_multi_hot_and_unknown_policy(tmp_path):
    lm = read_labels(write(tmp_path, "labels.csv", LABELS))
    y = multi_hot(("/m/09x0r", "/m/03l9g"), lm)
    assert y.dtype == torch.float32 and y.tolist() == [1.0, 0.0, 1.0]
    with pytest.raises(UserError, match="'/m/zzz' is not in the class list"):
        multi_hot(("/m/09x0r", "/m/zzz"), lm)
    skipped = Counter()
    y = multi_hot(("/m/zzz", "/m/05zppz", "/m/zzz"), lm, unknown="skip", skipped=skipped)
    assert y.tolist() == [0.0, 1.0, 0.0] and skipped == Counter({"/m/zzz": 2})
    assert multi_hot(("/m/zzz",), lm, unknown="skip").sum() == 0
    with pytest.raises(UserError, match="'error' or 'skip'"):
        multi_hot((), lm, unknown="ignore")


# ------------------------------------------------------------------------------------------- clips


def test_find_clips_layouts(tmp_path):
    d = tmp_path / "clips"
    d.mkdir()
    for name in ["aaaaaaaaaaa.wav", "aaaaaaaaaaa.flac", "bbb_bbbbbbb_30.000.flac", "ccccccccccc_10.wav",
                 "ccccccccccc_20000_30000.wav", "ddddddddddd.mp3", "notes.txt"]:
        (d / name).write_bytes(b"")
    segs = [Segment("aaaaaaaaaaa", 0, 10, ("/m/a",)), Segment("bbb_bbbbbbb", 30, 40, ("/m/a",)),
            Segment("ccccccccccc", 20, 30, ("/m/a",)), Segment("ddddddddddd", 0, 10, ("/m/a",)),
            Segment("eeeeeeeeeee", 0, 10, ("/m/a",))]
    found, missing = find_clips(segs, d)
    assert found == {"aaaaaaaaaaa": d / "aaaaaaaaaaa.wav",  # exact name, .wav before .flac
                     "bbb_bbbbbbb": d / "bbb_bbbbbbb_30.000.flac",  # underscore inside the YTID
                     "ccccccccccc": d / "ccccccccccc_20000_30000.wav"}  # start in ms picks the variant
    assert missing == ["ddddddddddd", "eeeeeeeeeee"]
    found, missing = find_clips(segs[:1], d, exts=(".flac",))
    assert found == {"aaaaaaaaaaa": d / "aaaaaaaaaaa.flac"} and missing == []
    with pytest.raises(UserError, match="several clips match YTID ccccccccccc"):
        find_clips(["ccccccccccc"], d)  # plain YTIDs: no start to tell the variants apart
    with pytest.raises(UserError, match="does not exist"):
        find_clips(segs, tmp_path / "nope")


# -------------------------------------------------------------------------------- the real files


def test_real_labels_segments_and_clip(shared_audioset):
    lm = read_labels(shared_audioset / "class_labels_indices.csv")
    assert len(lm) == 527 and lm.name("/m/05zppz") == "Male speech, man speaking"
    segs = read_segments(shared_audioset / "eval_segments.csv")
    assert len(segs) == 20371 and len({s.ytid for s in segs}) == 20371
    skipped = Counter()
    assert sum(multi_hot(s.mids, lm, unknown="skip", skipped=skipped).sum().item() for s in segs[:2000]) > 2000
    assert not skipped
    found, missing = find_clips(segs, shared_audioset / "wav")
    assert found == {"--BfvyPmVMo": shared_audioset / "wav" / "--BfvyPmVMo.wav"}
    assert len(missing) == 20370
    seg = next(s for s in segs if s.ytid == "--BfvyPmVMo")
    assert seg.mids == ("/m/03l9g",) and (seg.start, seg.end) == (20.0, 30.0)
    y = multi_hot(seg.mids, lm)
    assert y.shape == (527,) and y.sum() == 1 and y[lm.index("/m/03l9g")] == 1
    assert lm.name(lm.mid(int(y.argmax()))) == "Hammer"


def test_real_balanced_train(shared_audioset):
    segs = read_segments(shared_audioset / "balanced_train_segments.csv")
    assert len(segs) > 20000 and all(s.mids for s in segs)


def test_real_manifest_and_remap(shared_audioset):
    path = shared_audioset / "audioset_eval_data.json"
    entries = read_manifest(path)
    assert len(entries) > 20000
    old = str(entries[0].wav.parent) + "/"
    remapped = read_manifest(path, {old: str(shared_audioset / "wav") + "/"})
    hammer = [e for e in remapped if e.wav.name == "--BfvyPmVMo.wav"]
    assert len(hammer) == 1 and hammer[0].wav.is_file() and hammer[0].mids == ("/m/03l9g",)
