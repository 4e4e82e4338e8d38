"""report.html and plots/: a self-contained page with a figure per (threat, attack) and the worst cases,
re-rendered byte for byte by ``avharness report``; report.md links the figures; plain progress lines."""

import io
import json
import re
import shutil
from pathlib import Path

import pytest
from test_cli import GOOD, write

from avharness.cli import main

ROOT = Path(__file__).resolve().parents[1]


def parse_html(text: str):
    """The page parsed strictly (html5lib raises on any parse error)."""
    import html5lib

    return html5lib.HTMLParser(strict=True, namespaceHTMLElements=False).parse(text)


def external_urls(text: str) -> list[str]:
    """http(s) URLs the page would load or link (src=, href=, url(...)); xmlns declarations are names, not loads."""
    return [m.group(0) for m in re.finditer(r'(?:\b(?:src|href|xlink:href)\s*=\s*["\']?|url\(\s*["\']?)\s*(?:https?:)?//',
                                            text, re.I)]


def check_page(text: str) -> None:
    parse_html(text)
    assert not external_urls(text), external_urls(text)[:3]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, example_site):
    """One run of the CLI tests' suite (2 attacks × an audio sweep and a joint sweep), shared by this module."""
    from avharness.plugins import set_registry

    tmp = tmp_path_factory.mktemp("html")
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(example_site))
        set_registry(None)
        assert main(["run", str(write(tmp, GOOD)), "-o", str(tmp / "out"), "-q"]) == 0
    set_registry(None)
    return tmp / "out"


def figures(doc, **attrs) -> list:
    return [f for f in doc.iter("figure") if all(f.get(f"data-{k}") == v for k, v in attrs.items())]


def test_page_is_self_contained_html_with_a_plot_per_threat_and_attack(finished):
    text = (finished / "report.html").read_text()
    check_page(text)
    assert "<script" not in text and "<link" not in text  # styles inline, no code
    doc = parse_html(text)
    report = json.loads((finished / "report.json").read_text())
    pairs = {(c["threat"], c["attack"]) for c in report["cells"]}
    threats = {c["threat"] for c in report["cells"]}
    curves = figures(doc, plot="curve", metric="robust_accuracy")
    assert {(f.get("data-threat"), f.get("data-attack")) for f in curves if f.get("data-attack")} == pairs
    assert len([f for f in curves if f.get("data-attack")]) == len(pairs)
    worst = [f for f in curves if f.get("data-worst") == "true"]
    assert sorted(f.get("data-threat") for f in worst) == sorted(threats)
    assert all(f.find("{http://www.w3.org/2000/svg}svg") is not None for f in curves)  # the image is inline
    assert len(figures(doc, plot="overview")) == 1
    assert {f.get("data-model") for f in figures(doc, plot="heatmap")} == {m["name"] for m in report["models"]}
    # ids are unique across the inline figures (matplotlib numbers every figure's elements from 1)
    ids = [e.get("id") for e in doc.iter() if e.get("id")]
    assert len(ids) == len(set(ids))
    # units on the axes, from the data's specs
    assert "audio linf ε (feature)" in text
    # the sections a reader looks for
    for section in ("summary", "findings", "checks", "curves", "per-class", "skipped", "models", "provenance", "cells"):
        assert doc.find(f".//section[@id='{section}']") is not None, section
    assert report["suite"]["sha256"] in text and report["data"]["manifest_sha256"] in text


def test_markdown_links_the_plots_and_keeps_the_summary_first(finished):
    md = (finished / "report.md").read_text()
    linked = re.findall(r"\]\((plots/[^)]+\.svg)\)", md)
    assert linked and all((finished / p).exists() for p in linked)
    assert all(line.endswith(".svg)") for line in md.splitlines() if line.startswith("- [")), "a link broke across lines"
    assert sorted(linked) == sorted(f"plots/{p.name}" for p in (finished / "plots").glob("*.svg"))
    order = [md.index(h) for h in ("## Clean vs robust accuracy", "## Plots", "## Findings", "### pgd — threat audio-linf",
                                   "## All cells")]
    assert order == sorted(order)
    for svg in (finished / "plots").glob("*.svg"):
        assert svg.read_text().startswith("<?xml")


def test_report_command_rerenders_byte_identical(finished, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(finished, copy, ignore=shutil.ignore_patterns("store"))
    before = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    for p in [copy / "report.md", copy / "report.html", *(copy / "plots").glob("*.svg")]:
        p.unlink()
    (copy / "plots" / "stale.svg").write_text("<svg/>")  # a figure this report no longer has is removed
    assert main(["report", str(copy)]) == 0
    assert "report.html" in capsys.readouterr().out
    after = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    assert after.keys() == before.keys()
    assert all(after[k] == before[k] for k in before), [str(k) for k in before if after[k] != before[k]]
    (copy / "report.html").unlink()
    assert main(["report", str(copy / "report.json"), "--format", "md"]) == 0
    assert not (copy / "report.html").exists() and (copy / "report.md").read_bytes() == before[Path("report.md")]


@pytest.mark.parametrize("damage, message", [
    ("missing", r"report not found"),
    ("no json", r"no report\.json in this folder"),
    ("bad json", r"not a readable JSON report"),
    ("no samples", r"no samples\.jsonl beside report\.json"),
    ("bad samples", r"samples\.jsonl:2: not a JSON line"),
])
def test_report_command_errors_are_one_line(finished, tmp_path, capsys, damage, message):
    run = tmp_path / "run"
    shutil.copytree(finished, run, ignore=shutil.ignore_patterns("store", "plots"))
    if damage == "missing":
        shutil.rmtree(run)
    elif damage == "no json":
        (run / "report.json").unlink()
    elif damage == "bad json":
        (run / "report.json").write_text("{not json")
    elif damage == "no samples":
        (run / "samples.jsonl").unlink()
    else:
        lines = (run / "samples.jsonl").read_text().splitlines()
        (run / "samples.jsonl").write_text("\n".join([lines[0], lines[1][:20], *lines[2:]]) + "\n")
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and err.count("\n") == 1 and "Traceback" not in err


def test_defense_cost_and_latent_metric_plots(example, tmp_path):
    suite = (GOOD.replace("  - {plugin: standard, epochs: 3, batch_size: 32, lr: 0.01}\n",
                          "  - {name: short, plugin: standard, epochs: 1, batch_size: 32, lr: 0.01}\n"
                          "  - {name: long, plugin: standard, epochs: 3, batch_size: 32, lr: 0.01}\n")
             .replace("  - {plugin: fgsm}\n", "")
             .replace("metrics: [accuracy, attack_success_rate, perturbation]",
                      "metrics: [accuracy, {plugin: convexity, pairs_per_class: 50, latents: [fused]}]"))
    out = tmp_path / "out"
    assert main(["run", str(write(tmp_path, suite)), "-o", str(out), "-q"]) == 0
    doc = parse_html((out / "report.html").read_text())
    assert len(figures(doc, plot="defense_cost")) == 1
    report = json.loads((out / "report.json").read_text())
    with_latents = {(p["model"], p["defense"]) for p in report["metric_predicts_robustness"]}
    assert with_latents and {(f.get("data-model"), f.get("data-defense")) for f in figures(doc, plot="latent")} == with_latents
    # one attack: its panel is the worst case, with no duplicate worst-case panel
    curves = figures(doc, plot="curve")
    assert all(f.get("data-attack") == "pgd" and f.get("data-worst") == "true" for f in curves)


def test_intervals_are_drawn_as_bands_when_the_report_has_them(finished):
    from avharness.report.plots import plan_plots, svg

    report = json.loads((finished / "report.json").read_text())
    for c in report["cells"]:  # without intervals first
        c.pop("robust_accuracy_ci", None)
        c.pop("clean_accuracy_ci", None)
    plot = next(p for p in plan_plots(report) if p.kind == "curve")
    plain = svg(plot.draw())
    with_ci = json.loads(json.dumps(report))
    for c in with_ci["cells"]:  # intervals as the statistics of another module would add them
        c["robust_accuracy_ci"] = [max(0.0, c["robust_accuracy"] - 0.1), min(1.0, c["robust_accuracy"] + 0.1)]
    banded = svg(next(p for p in plan_plots(with_ci) if p.id == plot.id).draw())
    assert banded.count("<path") > plain.count("<path")  # the bands are extra filled areas
    assert svg(plot.draw()) == plain  # and drawing is deterministic


def test_progress_is_plain_lines_off_a_terminal():
    from rich.console import Console

    from avharness.progress import Reporter

    buf = io.StringIO()
    with Reporter(console=Console(file=buf)) as rep:  # a StringIO is not a terminal
        assert rep.plain and rep.progress is None
        rep.log("model audio: trained")
        advance = rep.task("pgd audio eps#1 on audio", 3)
        advance(2)
        advance()
    lines = buf.getvalue().splitlines()
    assert lines[0] == "model audio: trained"
    assert len(lines) == 2 and lines[1].startswith("pgd audio eps#1 on audio: done (3 steps")
    assert "\x1b" not in buf.getvalue()  # no terminal control codes
    assert Reporter(console=Console(file=io.StringIO(), force_terminal=True)).progress is not None
