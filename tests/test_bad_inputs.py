"""The bad-input catalogue: every way a careless or hostile user can get input wrong, and what it gets.

The promise (README, "Bad input"): a mistake in the user's input prints ONE line on stderr naming
what is wrong, where (file, line, key path) and what to do, and exits 2 — no traceback — and nothing
outside the output folder changes. Damage inside a run's own store is not the user's mistake: it is
recomputed with one log line and the run succeeds (exit 0).

One parametrised test, ``test_bad_input``, runs every case of ``CASES`` in-process through
``avharness.cli.main`` on the tiny ``gaussian_av`` / ``linear_av`` plugins of examples/ (each case
well under a second) and asserts the exit code, the single line, no traceback, the named key or file,
and an unchanged file tree outside the output folder. The lock and the YAML limits have their own
tests below; ``benchmarks/bench_hostile_yaml.py`` measures the alias bomb and a 20 MB suite.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import socket
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from avharness.cli import main
from avharness.store import LOCK_NAME, Store, output_lock
from avharness.yamlload import Limits, parse_yaml

ROOT = Path(__file__).resolve().parents[1]

SUITE = """\
name: tiny
seed: 3
data: {plugin: gaussian_av, n: 120}
eval: {batch_size: 32}
models:
  - {name: audio, plugin: linear_av, modalities: [audio]}
  - {name: fused, plugin: linear_av}
defenses:
  - {plugin: standard, epochs: 1, batch_size: 32, lr: 0.01}
attacks:
  - {plugin: fgsm}
threats:
  - {name: audio-linf, audio: {norm: linf, eps: [0.0, 0.5]}}
metrics: [accuracy]
"""

#: a suite evaluating one model as loaded from a checkpoint (line 5: the checkpoint)
CKPT_SUITE = """\
name: ckpt
data: {plugin: gaussian_av, n: 120}
eval: {batch_size: 32}
models:
  - {name: fused, plugin: linear_av, checkpoint: "CKPT"}
defenses: [none]
attacks: [fgsm]
threats:
  - {name: audio-linf, audio: {norm: linf, eps: [0.5]}}
"""


def audioset_suite(root: Path | None, extra: str = "") -> str:
    where = f'root: "{root}", ' if root is not None else ""
    return textwrap.dedent(f"""\
        name: as
        data: {{plugin: audioset, {where}clip_seconds: 1.0{extra}}}
        models:
          - {{name: a, plugin: cnn_transformer}}
        """)


@dataclass
class Ctx:
    """A case's sandbox: ``tmp`` (also the working directory); the output folder is ``tmp/out``."""

    tmp: Path

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    def write(self, text: str | bytes, name: str = "suite.yaml") -> Path:
        p = self.tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            p.write_bytes(text)
        else:
            p.write_text(text)
        return p

    def suite(self, old: str | None = None, new: str = "", base: str = SUITE) -> Path:
        if old is not None:
            assert old in base, f"case setup: {old!r} is not in the suite"
            base = base.replace(old, new, 1)
        return self.write(base)


CASES: dict[str, object] = {}
#: cases whose output folder holds a finished run of SUITE before the command (store damage)
NEEDS_RUN: set[str] = set()
#: cases that exit 0 (the store recovers) rather than 2
RECOVERS: set[str] = set()


def case(name: str, *, needs_run: bool = False, recovers: bool = False):
    def deco(fn):
        assert name not in CASES, name
        CASES[name] = fn
        if needs_run:
            NEEDS_RUN.add(name)
        if recovers:
            RECOVERS.add(name)
        return fn
    return deco


def suite_case(name: str, old: str | None, new: str, *needles: str, command: str = "validate", base: str = SUITE):
    """A suite that differs from SUITE (or ``base``) by one replacement; checked with ``command``."""
    def fn(c: Ctx):
        path = c.suite(old, new, base)
        extra = ["-o", c.out, "-q"] if command == "run" else []  # -q: no progress lines before the error
        return [command, path, *extra], needles
    case(name)(fn)


# ------------------------------------------------------------------------------ malformed YAML

suite_case("yaml: unclosed { reported where it opens", "eval: {batch_size: 32}", "eval: {batch_size: 32",
           "suite.yaml:4:", "not closed")
suite_case("yaml: unclosed [", "modalities: [audio]}", "modalities: [audio}", "suite.yaml:6:", "not closed")
suite_case("yaml: unclosed quote", "name: tiny", 'name: "tiny', "suite.yaml:1:", "quote")
suite_case("yaml: tab indentation", "seed: 3", "\tseed: 3", "suite.yaml:2:", "YAML syntax error")
suite_case("yaml: bad list indentation", "  - {name: fused", " - {name: fused", "suite.yaml:", "YAML syntax error")
suite_case("yaml: mapping value in a scalar", "seed: 3", "seed: a: b", "suite.yaml:2:", "YAML syntax error")
suite_case("yaml: duplicate key", "seed: 3", "seed: 3\nseed: 4", "suite.yaml:3:", "'seed' appears twice")
suite_case("yaml: undefined alias", "seed: 3", "seed: *nope", "suite.yaml:2:", "nope")
suite_case("yaml: duplicate anchor", "seed: 3", "seed: &x 3\nversion: &x 1", "suite.yaml:3:", "&x is defined twice")
suite_case("yaml: python tag", "seed: 3", "seed: !!python/object/apply:os.system [echo]", "suite.yaml:2:",
           "python/object/apply:os.system", "not allowed")
suite_case("yaml: unknown local tag", "seed: 3", "seed: !thing 3", "suite.yaml:2:", "!thing")
suite_case("yaml: control character \\x1a", "name: tiny", "name: ti\x1any", "suite.yaml:1:", "U+001A")
suite_case("yaml: NUL byte", "seed: 3", "seed: 3\x00", "suite.yaml:2:", "U+0000")
suite_case("yaml: non-printable U+FFFE", "name: tiny", "name: \ufffe", "suite.yaml:1:", "U+FFFE")
suite_case("yaml: key that is a list", "seed: 3", "? [a, b]\n: 3", "suite.yaml:2:", "keys must be plain scalars")
suite_case("yaml: two documents", None, "", "expected a single document",
           base=SUITE + "---\nname: other\n")
suite_case("yaml: recursive alias", "seed: 3", "seed: 3\ndescription: &r [*r]", "suite.yaml:3:", "recursive")
suite_case("yaml: alias bomb in a plugin parameter", "  - {plugin: fgsm}", "  - plugin: fgsm\n    bomb: &a9 [" +
           ",".join(["*a8"] * 9) + "]",
           "suite.yaml:", "alias bomb", "AVHARNESS_YAML_MAX_NODES",
           base="a0: &a0 [x,x,x,x,x,x,x,x,x]\n" + "".join(
               f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 9)) + SUITE)
suite_case("yaml: top-level list", None, "", "must be a mapping of keys, got a list", base="- a\n- b\n")
suite_case("yaml: top-level string", None, "", "must be a mapping of keys, got a string", base="just words\n")
suite_case("yaml: empty file", None, "", "suite.yaml:1:", "the suite is empty", base="")
suite_case("yaml: only comments", None, "", "the suite is empty", base="# nothing here\n")
suite_case("yaml: nested too deeply", None, "", "nested too deeply", base="x: " + "[" * 3000 + "]" * 3000 + "\n")


@case("yaml: not UTF-8")
def _(c):
    return ["validate", c.write(SUITE.encode().replace(b"tiny", b"t\xe9ny"))], ["suite.yaml:1:", "not UTF-8"]


@case("yaml: 20 MB suite refused before parsing")
def _(c):
    return ["validate", c.write(SUITE + "x: 1\n" * (4 << 20))], ["suite.yaml", "limit of", "AVHARNESS_YAML_MAX_BYTES"]


@case("yaml: too many aliases (lowered limit)")
def _(c, monkeypatch=None):
    os.environ["AVHARNESS_YAML_MAX_ALIASES"] = "2"
    return ["validate", c.suite("seed: 3", "seed: &s 3\nversion: *s\ndescription: 'x'\nx1: *s\nx2: *s")], \
        ["suite.yaml:6:", "AVHARNESS_YAML_MAX_ALIASES"]


@case("yaml: limit variable not a number")
def _(c):
    os.environ["AVHARNESS_YAML_MAX_BYTES"] = "lots"
    return ["validate", c.suite()], ["AVHARNESS_YAML_MAX_BYTES", "positive integer"]


@case("suite: path is a folder")
def _(c):
    (c.tmp / "adir").mkdir()
    return ["validate", c.tmp / "adir"], ["adir", "is a folder"]


@case("suite: file not found")
def _(c):
    return ["run", c.tmp / "nope.yaml", "-o", c.out], ["nope.yaml", "not found"]


# ------------------------------------------------------------------------------ the schema

suite_case("schema: unknown top key", "seed: 3", "seed: 3\nsede: 4", "suite.yaml:3:", "sede", "unknown key")
suite_case("schema: missing name", "name: tiny\n", "", "'name'", "missing required key")
suite_case("schema: missing data", "data: {plugin: gaussian_av, n: 120}\n", "", "'data'", "missing required key")
suite_case("schema: missing models", "models:\n  - {name: audio, plugin: linear_av, modalities: [audio]}\n"
           "  - {name: fused, plugin: linear_av}\n", "", "'models'", "missing required key")
suite_case("schema: models is empty", "models:\n  - {name: audio, plugin: linear_av, modalities: [audio]}\n"
           "  - {name: fused, plugin: linear_av}\n", "models: []\n", "suite.yaml:5:", "models", "at least one model")
suite_case("schema: models is a mapping", "models:\n  - {name: audio, plugin: linear_av, modalities: [audio]}\n"
           "  - {name: fused, plugin: linear_av}\n", "models: {a: 1}\n", "suite.yaml:5:", "models", "expected a list")
suite_case("schema: seed not an integer", "seed: 3", "seed: three", "suite.yaml:2:", "seed", "expected an integer")
suite_case("schema: version a string", "seed: 3", "seed: 3\nversion: one", "suite.yaml:3:", "version")
suite_case("schema: wrong schema", "seed: 3", "seed: 3\nschema: avharness/suite@9", "suite.yaml:3:", "schema")
suite_case("schema: unknown device", "seed: 3", "seed: 3\ndevice: tpu", "suite.yaml:3:", "device", "tpu")
suite_case("schema: unknown eval key", "eval: {batch_size: 32}", "eval: {batch_size: 32, lmit: 3}",
           "suite.yaml:4:", "eval.lmit", "did you mean 'limit'")
suite_case("schema: batch_size 0", "eval: {batch_size: 32}", "eval: {batch_size: 0}", "suite.yaml:4:",
           "eval.batch_size", "at least 1")
suite_case("schema: negative limit", "eval: {batch_size: 32}", "eval: {batch_size: 32, limit: -1}",
           "eval.limit", "at least 1")
suite_case("schema: unknown success rule", "eval: {batch_size: 32}", "eval: {batch_size: 32, success: maybe}",
           "eval.success", "maybe")
suite_case("schema: success_margin out of range", "eval: {batch_size: 32}",
           "eval: {batch_size: 32, success_margin: 1.5}", "eval.success_margin", "[0, 1)")
suite_case("schema: threshold on a multiclass task", "eval: {batch_size: 32}",
           "eval: {batch_size: 32, threshold: 0.5}", "eval.threshold", "multi-label")
suite_case("schema: model without name", "{name: fused, plugin: linear_av}", "{plugin: linear_av}",
           "suite.yaml:7:", "models[1]", "'name'")
suite_case("schema: model without plugin", "{name: fused, plugin: linear_av}", "{name: fused}",
           "suite.yaml:7:", "models[1]", "'plugin'")
suite_case("schema: plugin not a string", "{name: fused, plugin: linear_av}", "{name: fused, plugin: [x]}",
           "models[1].plugin", "expected a string")
suite_case("schema: model entry is a number", "  - {name: fused, plugin: linear_av}", "  - 5",
           "suite.yaml:7:", "models[1]", "expected a mapping")
suite_case("schema: duplicate model name", "name: fused", "name: audio", "models[1].name", "already used")
suite_case("schema: empty model name", "name: fused", "name: ''", "models[1].name", "non-empty")
suite_case("plugins: unknown model", "plugin: linear_av}", "plugin: linear_va}", "suite.yaml:7:",
           "models[1].plugin", "linear_av")
suite_case("plugins: unknown dataset", "plugin: gaussian_av", "plugin: gausian_av", "suite.yaml:3:",
           "data.plugin", "gaussian_av")
suite_case("plugins: unknown attack", "{plugin: fgsm}", "{plugin: fgms}", "suite.yaml:11:", "attacks[0].plugin",
           "did you mean 'fgsm'")
suite_case("plugins: unknown defense", "{plugin: standard,", "{plugin: standrd,", "defenses[0].plugin", "standard")
suite_case("plugins: unknown metric", "metrics: [accuracy]", "metrics: [acuracy]", "metrics[0].plugin",
           "accuracy")
suite_case("plugins: unknown parameter", "{plugin: fgsm}", "{plugin: fgsm, stpes: 3}", "suite.yaml:11:",
           "attacks[0].stpes", "unknown parameter")
suite_case("plugins: wrong parameter type", "epochs: 1", "epochs: many", "suite.yaml:9:", "defenses[0].epochs",
           "expected an integer")
suite_case("plugins: parameter a dataset rejects", "n: 120", "n: 2", "suite.yaml:3:", "data", "n must be at least")
suite_case("plugins: model rejects a modality (run)", "modalities: [audio]", "modalities: [depth]",
           "suite.yaml:6:", "models[0]", "depth", command="run")
suite_case("threats: no name", "{name: audio-linf, audio:", "{audio:", "suite.yaml:13:", "threats[0]", "'name'")
suite_case("threats: names no modality", "{name: audio-linf, audio: {norm: linf, eps: [0.0, 0.5]}}",
           "{name: audio-linf}", "threats[0]", "names no modality")
suite_case("threats: negative eps", "eps: [0.0, 0.5]", "eps: [0.0, -0.5]", "suite.yaml:13:", "threats[0].audio.eps",
           ">= 0")
suite_case("threats: NaN eps", "eps: [0.0, 0.5]", "eps: [0.0, .nan]", "threats[0].audio.eps", "expected a number")
suite_case("threats: infinite eps", "eps: [0.0, 0.5]", "eps: .inf", "threats[0].audio.eps", "expected a number")
suite_case("threats: eps a string", "eps: [0.0, 0.5]", "eps: big", "threats[0].audio.eps", "'big'")
suite_case("threats: empty eps list", "eps: [0.0, 0.5]", "eps: []", "threats[0].audio.eps", "empty")
suite_case("threats: missing eps", "{norm: linf, eps: [0.0, 0.5]}", "{norm: linf}", "threats[0].audio", "'eps'")
suite_case("threats: bad norm", "norm: linf", "norm: l7", "threats[0].audio.norm", "l7")
suite_case("threats: unknown budget key", "norm: linf,", "norm: linf, epz: 1,", "threats[0].audio.epz",
           "did you mean 'eps'")
suite_case("threats: modality the data lacks", "audio: {norm", "depth: {norm", "suite.yaml:13:", "threats[0].depth",
           "no modality 'depth'")
suite_case("threats: unequal joint sweep", "eps: [0.0, 0.5]}}", "eps: [0.0, 0.5]}, video: {norm: l2, eps: [1, 2, 3]}}",
           "threats[0]", "equal length")
suite_case("threats: norm none with eps", "norm: linf", "norm: none", "threats[0].audio.eps", "takes no eps")
suite_case("threats: budget not a mapping", "audio: {norm: linf, eps: [0.0, 0.5]}", "audio: 0.5",
           "threats[0].audio", "expected a mapping")
suite_case("threats: entry is a string", "  - {name: audio-linf, audio: {norm: linf, eps: [0.0, 0.5]}}",
           "  - audio", "suite.yaml:13:", "threats[0]", "expected a mapping")
suite_case("threats: attacks without threats", "threats:\n  - {name: audio-linf, audio: {norm: linf, eps: [0.0, 0.5]}}\n",
           "", "threats", "no threats")
suite_case("threats: duplicate name", "metrics: [accuracy]",
           "  - {name: audio-linf, audio: {norm: l2, eps: 1}}\nmetrics: [accuracy]", "threats[1].name", "used twice")
suite_case("checkpoints: key_map without checkpoint", "{name: fused, plugin: linear_av}",
           "{name: fused, plugin: linear_av, key_map: {a.: b.}}", "models[1].key_map", "give the checkpoint too")
suite_case("checkpoints: file does not exist", "{name: fused, plugin: linear_av}",
           "{name: fused, plugin: linear_av, checkpoint: missing.pt}", "suite.yaml:7:", "models[1].checkpoint",
           "missing.pt")
suite_case("checkpoints: defense none without checkpoints", "{plugin: standard, epochs: 1, batch_size: 32, lr: 0.01}",
           "{plugin: none}", "defenses[0]", "--set models.0.checkpoint=")


# ------------------------------------------------------------------------------ --set values

@case("--set: no '='")
def _(c):
    return ["validate", c.suite(), "--set", "seed"], ["--set 'seed'", "KEY=VALUE"]


@case("--set: wrong type")
def _(c):
    return ["validate", c.suite(), "--set", "seed=x"], ["(--set seed)", "seed", "expected an integer"]


@case("--set: control character")
def _(c):
    return ["validate", c.suite(), "--set", "name=a\x1ab"], ["--set name", "U+001A"]


@case("--set: no such list item")
def _(c):
    return ["validate", c.suite(), "--set", "models.9.name=x"], ["--set models.9.name", "no list item '9'"]


@case("--set: inside a scalar")
def _(c):
    return ["validate", c.suite(), "--set", "seed.x=1"], ["--set seed.x", "not a mapping or list"]


@case("--set: YAML syntax error")
def _(c):
    return ["validate", c.suite(), "--set", "eval={batch_size: 3"], ["--set eval", "not closed"]


@case("--set: empty key path")
def _(c):
    return ["validate", c.suite(), "--set", "=3"], ["--set '=3'", "empty key path"]


@case("--set: alias bomb")
def _(c):
    bomb = "[" + ",".join(["&a0 [x,x,x,x,x,x,x,x,x]"] + [f"&a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]) + "]"
    return ["validate", c.suite(), "--set", f"attacks.0.bomb={bomb}"], ["--set attacks.0.bomb", "alias bomb"]


# ------------------------------------------------------------------------------ the command line

@case("cli: no command")
def _(c):
    return [], ["no command given", "run"]


@case("cli: unknown command")
def _(c):
    return ["rnu"], ["invalid choice", "rnu"]


@case("cli: --limit not a number")
def _(c):
    return ["run", c.suite(), "--limit", "abc", "-o", c.out], ["--limit", "abc"]


@case("cli: --limit 0")
def _(c):
    return ["run", c.suite(), "--limit", "0", "-o", c.out], ["--limit", "at least 1"]


@case("cli: unknown --device")
def _(c):
    return ["run", c.suite(), "--device", "tpu"], ["--device", "tpu"]


@case("cli: unknown flag")
def _(c):
    return ["run", c.suite(), "--frobnicate"], ["--frobnicate"]


@case("cli: validate without a suite")
def _(c):
    return ["validate"], ["suite", "avharness validate --help"]


@case("cli: list of an unknown kind")
def _(c):
    return ["list", "widget"], ["widget"]


@case("cli: plugin without subcommand")
def _(c):
    return ["plugin"], ["no command given", "check"]


@case("cli: output folder is a file")
def _(c):
    blocker = c.write("not a folder", "out")
    return ["run", c.suite(), "-o", blocker / "sub"], ["out/sub", "not writable"]


@case("cli: --tolerance not a number")
def _(c):
    return ["check", c.tmp / "r.json", "--baseline", c.tmp / "b.json", "--tolerance", "abc"], ["--tolerance", "abc"]


# ------------------------------------------------------------------------------ checkpoints

def _net_state() -> dict:
    from avharness_example import GaussianAV, LinearAV

    data = GaussianAV(n=120)
    return LinearAV(data.task, data.specs).state_dict()


def ckpt_case(name: str, make, *needles: str):
    def fn(c: Ctx):
        path = c.tmp / "weights.pt"
        make(path)
        suite = c.write(CKPT_SUITE.replace("CKPT", str(path)))
        return ["run", suite, "-o", c.out, "-q"], ("suite.yaml:5:", "models[0].checkpoint", "weights.pt", *needles)
    case(name)(fn)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo owned > OWNED",))


def _save(obj):
    def make(path):
        torch.save(obj() if callable(obj) else obj, path)
    return make


def _truncated(path):
    buf = io.BytesIO()
    torch.save(_net_state(), buf)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])


ckpt_case("checkpoint: random bytes", lambda p: p.write_bytes(os.urandom(2000)), "not a readable torch checkpoint")
ckpt_case("checkpoint: empty file", lambda p: p.write_bytes(b""), "is empty")
ckpt_case("checkpoint: truncated", _truncated, "incomplete")
ckpt_case("checkpoint: malicious pickle in torch.save", _save(lambda: {"w": torch.zeros(1), "x": _Evil()}),
          "asks to run code", "system")
ckpt_case("checkpoint: malicious raw pickle", lambda p: p.write_bytes(pickle.dumps(_Evil())), "asks to run code",
          "system")
ckpt_case("checkpoint: wrong shapes", _save(lambda: {k: torch.zeros(3, 3) for k in _net_state()}), "do not fit",
          "another shape")
ckpt_case("checkpoint: not tensors", _save({"epoch": 3, "notes": "hi"}), "not a state dict of tensors")
ckpt_case("checkpoint: missing keys", _save(lambda: dict(list(_net_state().items())[:1])), "missing")
ckpt_case("checkpoint: a list", _save([torch.zeros(1)]), "not a state dict")


@case("checkpoint: is a folder")
def _(c):
    (c.tmp / "weights.pt").mkdir()
    suite = c.write(CKPT_SUITE.replace("CKPT", str(c.tmp / "weights.pt")))
    return ["validate", suite], ["suite.yaml:5:", "models[0].checkpoint", "does not exist"]


# ------------------------------------------------------------------------------ check on bad reports

def _report(**changes) -> dict:
    cell = {"id": "m/d/a/t/0", "canonical": "audio:linf:0.5", "clean_accuracy": 0.9, "robust_accuracy": 0.5,
            "metrics": {"clean_accuracy": 0.9}}
    r = {"schema": "avharness/report@1", "suite": {"name": "tiny", "version": 1}, "cells": [cell]}
    for key, value in changes.items():
        target, k = (cell, key[5:]) if key.startswith("cell_") else (r, key)
        if value is None:
            target.pop(k, None)
        else:
            target[k] = value
    return r


def check_case(name: str, content, *needles: str, tolerance: str | None = None):
    def fn(c: Ctx):
        base = c.write(json.dumps(_report()), "baseline.json")
        rep = c.write(content if isinstance(content, bytes) else json.dumps(content), "report.json")
        tol = ["--tolerance", tolerance] if tolerance else []
        return ["check", rep, "--baseline", base, *tol], needles
    case(name)(fn)


check_case("check: random bytes", bytes(range(256)) * 4, "report.json", "not UTF-8")
check_case("check: not JSON", b"{\"schema\": ", "report.json", "not a readable JSON report")
check_case("check: JSON but not a report", [1, 2], "report.json", "not an avharness report")
check_case("check: another schema", {"schema": "x@1"}, "report.json", "not an avharness report")
check_case("check: no suite", _report(suite=None), "report.json", "'suite'")
check_case("check: suite without version", _report(suite={"name": "tiny"}), "report.json", "suite.version")
check_case("check: cell without robust_accuracy", _report(cell_robust_accuracy=None), "report.json", "robust_accuracy")
check_case("check: cells not a list", _report(cells={"a": 1}), "report.json", "'cells'")
check_case("check: metric not a number", _report(cell_metrics={"x": "high"}), "report.json", "metrics.x")
check_case("check: cell without id", _report(cell_id=None), "report.json", "cells[0].id")
check_case("check: tolerance nan", _report(), "--tolerance", "finite", tolerance="nan")
check_case("check: tolerance negative", _report(), "--tolerance", ">= 0", tolerance="-1")
check_case("check: tolerance inf", _report(), "--tolerance", "finite", tolerance="inf")
check_case("check: other suite", _report(suite={"name": "other", "version": 1}), "'other'", "not comparable")


@case("check: report not found")
def _(c):
    return ["check", c.tmp / "nope.json", "--baseline", c.tmp / "nope.json"], ["nope.json", "not found"]


@case("check: folder without report.json")
def _(c):
    (c.tmp / "run").mkdir()
    return ["check", c.tmp / "run", "--baseline", c.tmp / "run"], ["run/report.json", "no report.json"]


# ------------------------------------------------------------------------------ AudioSet folders

def _audioset(c: Ctx, n: int = 3, **kw) -> Path:
    from avharness_plugins.testing.layouts import write_audioset_csv_layout

    root = c.tmp / "audioset"
    write_audioset_csv_layout(root, n, seconds=1.0, **kw)
    return root


def stats_case(name: str, damage, *needles: str, extra: str = "", root: bool = True):
    """``data stats`` on an AudioSet folder damaged by ``damage(root)``; the statistics file goes to out/."""
    def fn(c: Ctx):
        folder = _audioset(c)
        damage(folder)
        suite = c.write(audioset_suite(folder if root else None, extra))
        return ["data", "stats", suite, "--split", "eval", "-o", c.out / "stats.json"], needles
    case(name)(fn)


def _first_wav(root: Path) -> Path:
    return sorted((root / "wav").glob("*.wav"))[0]


def _cut_after_header(root):
    p = _first_wav(root)
    p.write_bytes(p.read_bytes()[:44 + 32])


def _all_garbage(root):
    for p in (root / "wav").glob("*.wav"):
        p.write_bytes(b"\x00garbage" * 10)


def _bad_row(root):
    csv = root / "eval_segments.csv"
    csv.write_text(csv.read_text() + "broken row without commas\n")


stats_case("audioset: no root", lambda r: None, "data.root", root=False)
stats_case("audioset: root missing", lambda r: None, "no-such-folder", "does not exist",
           extra=', root: "no-such-folder"', root=False)
stats_case("audioset: no class list", lambda r: (r / "class_labels_indices.csv").unlink(), "class_labels_indices.csv")
stats_case("audioset: no clip folder", lambda r: (r / "wav").rename(r / "wav2"), "wav", "clip folder")
stats_case("audioset: no split file", lambda r: (r / "eval_segments.csv").unlink(), "eval_segments.csv", "splits")
stats_case("audioset: malformed csv row", _bad_row, "eval_segments.csv")
stats_case("audioset: wav cut after its header (missing: error)", _cut_after_header, "cut short", "missing: skip",
           extra=", missing: error")
stats_case("audioset: garbage clip (missing: error)",
           lambda r: _first_wav(r).write_bytes(os.urandom(500)), "unreadable audio", extra=", missing: error")
stats_case("audioset: empty clip (missing: error)", lambda r: _first_wav(r).write_bytes(b""), "unreadable audio",
           extra=", missing: error")
stats_case("audioset: every clip garbage", _all_garbage, "no usable clip")
stats_case("audioset: min_duration above 1", lambda r: None, "min_duration", extra=", min_duration: 2")
stats_case("audioset: unknown parameter", lambda r: None, "data.clip_secs", "clip_seconds", extra=", clip_secs: 2")
stats_case("audioset: bad missing policy", lambda r: None, "missing", "'sometimes'", extra=", missing: sometimes")
stats_case("audioset: stats file absent", lambda r: None, "nope.json", extra=", stats: nope.json")


@case("audioset: json manifest not JSON")
def _(c):
    root = c.tmp / "as_json"
    root.mkdir()
    (root / "class_labels_indices.csv").write_text("index,mid,display_name\n0,/m/0,zero\n")
    (root / "audioset_eval_data.json").write_text("{not json")
    suite = c.write(audioset_suite(root, ", layout: json"))
    return ["data", "stats", suite, "--split", "eval", "-o", c.out / "s.json"], ["audioset_eval_data.json"]


# ------------------------------------------------------------------------------ the store and the lock

def store_case(name: str, damage, *needles: str):
    """A finished run's store damaged by ``damage(store)``; the rerun recomputes with a log line, exit 0."""
    def fn(c: Ctx):
        damage(c.out / "store")
        return ["run", c.tmp / "suite.yaml", "-o", c.out], needles
    case(name, needs_run=True, recovers=True)(fn)


def _each_cell(write):
    def damage(store):
        for p in sorted((store / "cells").glob("*.json"))[:1]:
            write(p)
    return damage


def _cells_is_a_file(store):
    import shutil

    shutil.rmtree(store / "cells")
    (store / "cells").write_text("oops")


def _fit(write):
    def damage(store):
        for p in sorted((store / "models").glob("*/fit.json"))[:1]:
            write(p)
    return damage


store_case("store: cell replaced by {}", _each_cell(lambda p: p.write_text("{}")), "damaged", "recomputing")
store_case("store: cell replaced by []", _each_cell(lambda p: p.write_text("[]")), "damaged", "recomputing")
store_case("store: cell truncated", _each_cell(lambda p: p.write_bytes(p.read_bytes()[:50])), "unreadable",
           "recomputing")
store_case("store: cell with wrong types",
           _each_cell(lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "samples": "many"}))),
           "damaged", "'samples'")
store_case("store: cell of random bytes", _each_cell(lambda p: p.write_bytes(os.urandom(64))), "unreadable")
store_case("store: cells is a file", _cells_is_a_file, "was a file, not a folder")
store_case("store: fit.json replaced by []", _fit(lambda p: p.write_text("[]")), "fit.json is damaged", "retraining")
store_case("store: model.pt garbage", lambda s: next((s / "models").glob("*/model.pt")).write_bytes(b"junk"),
           "unreadable", "retraining")


@case("lock: another live run on this host")
def _(c):
    c.out.mkdir()
    (c.out / LOCK_NAME).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "started": "then"}))
    return ["run", c.suite(), "-o", c.out], ["another avharness run", f"pid {os.getppid()}", "--wait"]


@case("lock: a run on another host")
def _(c):
    c.out.mkdir()
    (c.out / LOCK_NAME).write_text(json.dumps({"pid": 12345, "host": "elsewhere.example", "started": "then"}))
    return ["run", c.suite(), "-o", c.out], ["elsewhere.example", "--force-unlock"]


# ------------------------------------------------------------------------------ the test

def _snapshot(root: Path, skip: tuple[Path, ...]) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        dirnames[:] = [n for n in dirnames if d / n not in skip]
        for n in filenames + dirnames:
            p = d / n
            if p in skip:
                continue
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, example_site):
    """A finished run of SUITE (its folder is copied for each store-damage case)."""
    import importlib

    from avharness.plugins import set_registry

    sys.path.insert(0, str(example_site))
    importlib.invalidate_caches()
    set_registry(None)
    try:
        tmp = tmp_path_factory.mktemp("finished")
        (tmp / "suite.yaml").write_text(SUITE)
        assert main(["run", str(tmp / "suite.yaml"), "-o", str(tmp / "out"), "-q"]) == 0
    finally:
        sys.path.remove(str(example_site))
        set_registry(None)
    return tmp


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, example, tmp_path, capsys, monkeypatch, request):
    for var in ("AVHARNESS_YAML_MAX_BYTES", "AVHARNESS_YAML_MAX_NODES", "AVHARNESS_YAML_MAX_ALIASES"):
        monkeypatch.setenv(var, "")  # empty = the default; a case may set one, and it is undone after the test
    monkeypatch.setenv("AVHARNESS_CACHE", str(tmp_path / "out" / "cache"))
    monkeypatch.chdir(tmp_path)
    c = Ctx(tmp_path)
    if name in NEEDS_RUN:
        import shutil

        done = request.getfixturevalue("finished_run")
        shutil.copytree(done / "out", c.out)
        shutil.copy(done / "suite.yaml", tmp_path / "suite.yaml")
    setup = CASES[name]
    argv, needles = setup(c)
    before = _snapshot(tmp_path, (c.out,))
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    if os.environ.get("AVHARNESS_SHOW_CATALOGUE"):  # print every message, to review their wording
        with open(os.environ["AVHARNESS_SHOW_CATALOGUE"], "a") as f:
            f.write(f"## {name} (exit {code})\n{err.replace(str(tmp_path), '<tmp>')}\n")
    assert "Traceback" not in err, err
    assert "LineList" not in err and "LineDict" not in err, err
    for needle in needles:
        assert needle in err, f"{needle!r} not in: {err}"
    if name in RECOVERS:
        assert code == 0, err
        assert (c.out / "report.json").is_file()
    else:
        assert code == 2, err
        assert err.startswith("avharness: error: ") and err.count("\n") == 1, err
    assert _snapshot(tmp_path, (c.out,)) == before, "a file outside the output folder changed"
    assert not (tmp_path / "OWNED").exists()


def test_catalogue_size():
    assert len(CASES) >= 80, len(CASES)


# ------------------------------------------------------------------------------ beyond the catalogue

def test_suite_name_cannot_lead_out_of_reports(example, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(SUITE.replace("name: tiny", "name: ../../escaped"))
    assert main(["run", "s.yaml", "-q"]) == 0, capsys.readouterr().err
    written = [p.relative_to(tmp_path) for p in tmp_path.rglob("report.json")]
    assert len(written) == 1 and written[0].parts[0] == "reports" and ".." not in written[0].parts
    assert not (tmp_path.parent / "escaped").exists() and not (tmp_path.parent.parent / "escaped").exists()


def test_files_written_with_the_umask(tmp_path):
    from avharness.store import atomic_write_text

    old = os.umask(0o027)
    try:
        import avharness.store as store

        store._UMASK = None
        atomic_write_text(tmp_path / "a.txt", "x")
        assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)
        store._UMASK = None
    atomic_write_text(tmp_path / "b.txt", "x")
    assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o666 & ~old


def test_two_runs_into_one_folder(example, tmp_path, capsys):
    """A second run while another process holds the folder refuses with one line naming it."""
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from avharness.store import output_lock\n"
         "with output_lock(sys.argv[1], command='avharness run other.yaml'):\n"
         "    print('held', flush=True); time.sleep(60)", str(out)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        (tmp_path / "s.yaml").write_text(SUITE)
        code = main(["run", str(tmp_path / "s.yaml"), "-o", str(out), "-q"])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, err
        assert f"pid {holder.pid} on {socket.gethostname()}" in err and "avharness run other.yaml" in err
        assert not (out / "report.json").exists() and not (out / "store").exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing: the next run takes the stale lock over and runs
    code = main(["run", str(tmp_path / "s.yaml"), "-o", str(out), "-q"])
    err = capsys.readouterr().err
    assert code == 0 and "taking over the lock of a run that is gone" in err, err
    assert (out / "report.json").is_file() and not (out / LOCK_NAME).exists()


def test_wait_for_the_lock(tmp_path):
    logs = []
    with output_lock(tmp_path):
        def second():
            with output_lock(tmp_path, wait=True, log=logs.append, poll_s=0.05):
                logs.append("got it")
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.3)
        assert logs and "waiting for the run" in logs[0] and "got it" not in logs
    t.join(5)
    assert logs[-1] == "got it" and not (tmp_path / LOCK_NAME).exists()


def test_force_unlock_only_for_another_host(tmp_path):
    lock = tmp_path / LOCK_NAME
    lock.write_text(json.dumps({"pid": 1, "host": "elsewhere.example", "started": "then"}))
    logs = []
    with output_lock(tmp_path, force_unlock=True, log=logs.append):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert "--force-unlock" in logs[0] and not lock.exists()
    lock.write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "started": "then"}))
    from avharness.errors import UserError

    with pytest.raises(UserError, match="another avharness run"), output_lock(tmp_path, force_unlock=True):
        pass
    assert json.loads(lock.read_text())["pid"] == os.getppid()  # a live local run's lock is never removed


def test_store_damage_is_logged_once(tmp_path):
    logs = []
    store = Store(tmp_path, log=logs.append)
    store.cell_path("k").parent.mkdir(parents=True)
    store.cell_path("k").write_text("{}")
    assert store.load_cell("k") is None and len(logs) == 1 and "recomputing" in logs[0]
    metric = tmp_path / "model_metrics" / "m.json"
    metric.parent.mkdir()
    for damaged in ("[]", "{}", "{\"wall_s\": 1", '{"wall_s": "x", "higher_is_better": {}}'):
        metric.write_text(damaged)
        assert store.load_model_metric(metric) is None and "recomputing" in logs[-1]
    metric.write_text('{"wall_s": 1.5, "higher_is_better": {"a": true}, "a": 0.3}')
    assert store.load_model_metric(metric)["a"] == 0.3


def test_yaml_limits_are_enforced_while_composing():
    bomb = "".join(f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9) if i else 'x'}]\n" for i in range(12))
    with pytest.raises(Exception, match="alias bomb"):
        parse_yaml(bomb, "bomb.yaml", Limits())
    assert parse_yaml("a: &x [1, 2]\nb: *x\n", "ok.yaml") == {"a": [1, 2], "b": [1, 2]}
    with pytest.raises(Exception, match="MAX_NODES"):
        parse_yaml("a: &x [1, 2]\nb: *x\n", "small.yaml", Limits(max_nodes=5))
