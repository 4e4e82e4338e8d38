"""Shared fixtures: a plugin distribution installed into a temporary site folder, registry resets."""

from __future__ import annotations

import importlib
import json
import shutil
import sys
import textwrap
from pathlib import Path

import pytest

from avharness.plugins import set_registry

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "avharness-example"
SHARED_AUDIOSET = ROOT.parent / "shared" / "data" / "audioset"


def make_dist(site: Path, dist: str, module: str, source: str | Path, entry: str = "plugin", version: str = "0.1.0") -> None:
    """Install ``module`` as distribution ``dist`` (with an ``avharness`` entry point) into ``site``.

    This writes a real ``.dist-info`` folder, so importlib.metadata finds the entry point exactly as
    it would for a pip-installed package.
    """
    if isinstance(source, Path) and source.is_dir():
        shutil.copytree(source, site / module)
    else:
        (site / f"{module}.py").write_text(textwrap.dedent(str(source)))
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[avharness]\n{entry} = {module}\n")


@pytest.fixture(scope="session")
def example_site(tmp_path_factory) -> Path:
    """A site folder holding the examples/ plugin as an installed distribution."""
    site = tmp_path_factory.mktemp("site")
    make_dist(site, "avharness-example", "avharness_example", EXAMPLE / "avharness_example", entry="example")
    return site


@pytest.fixture
def with_site(monkeypatch):
    """Put site folders on sys.path for this test and reload the registry around it.

    Modules imported from those folders leave ``sys.modules`` after the test: two tests may install
    different code under the same module name (e.g. ``mylab_attacks``), and the second must not get
    the first one's module from the import cache.
    """
    added: list[Path] = []

    def add(*sites: Path):
        for s in sites:
            monkeypatch.syspath_prepend(str(s))
            added.append(Path(s).resolve())
        importlib.invalidate_caches()
        set_registry(None)

    yield add
    for name, mod in list(sys.modules.items()):
        file = getattr(mod, "__file__", None)
        if file and any(Path(file).resolve().is_relative_to(s) for s in added):
            del sys.modules[name]
    set_registry(None)


@pytest.fixture
def example(with_site, example_site):
    with_site(example_site)
    return example_site


@pytest.fixture(autouse=True)
def _fresh_registry():
    set_registry(None)
    yield
    set_registry(None)


@pytest.fixture
def shared_audioset() -> Path:
    if not SHARED_AUDIOSET.exists():
        pytest.skip("../shared/data/audioset is not present (only in the developers' workplace)")
    return SHARED_AUDIOSET


@pytest.fixture(autouse=True)
def reports_match_schema(monkeypatch):
    """Every report any test writes is validated against the published JSON Schema, and its report.html
    parses as HTML and loads nothing from the network (cheap checks; tests/test_html_report.py has the rest)."""
    import jsonschema

    import avharness.report as report_pkg
    from avharness.report import build

    validator = jsonschema.Draft202012Validator(report_pkg.json_schema())
    original = build.write_report

    def checked(*args, **kwargs):
        report = original(*args, **kwargs)
        out = Path(args[1] if len(args) > 1 else kwargs["out_dir"]) / "report.json"
        errors = sorted(validator.iter_errors(json.loads(out.read_text())), key=lambda e: list(e.path))
        assert not errors, "report.json breaks schema.json: " + "; ".join(
            f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors[:5])
        from test_html_report import check_page

        check_page((out.parent / "report.html").read_text())
        return report

    monkeypatch.setattr(build, "write_report", checked)
    monkeypatch.setattr(report_pkg, "write_report", checked)
