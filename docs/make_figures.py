"""Redraw the README's robustness-curve picture from the quickstart's report.

    avharness run suites/quickstart.yaml        # writes reports/quickstart/report.json
    python docs/make_figures.py [REPORT_DIR]    # writes docs/quickstart_robustness.svg

The picture is the report's own overview figure (report.html shows the same one): robust accuracy
against eps, worst case over the suite's attacks, one panel per threat, fused models solid and
uni-modal ones dashed. The SVG is byte-identical for the same report.
"""

import sys
from pathlib import Path

import avharness
from avharness.report.plots import svg

DOCS = Path(__file__).resolve().parent


def main(report_dir: str = "reports/quickstart") -> Path:
    report = avharness.load_report(report_dir)
    fig, = report.plot("overview")
    out = DOCS / "quickstart_robustness.svg"
    out.write_text(svg(fig))
    print(f"wrote {out} from {report.path / 'report.json'}")
    return out


if __name__ == "__main__":
    try:
        main(*sys.argv[1:2])
    except avharness.UserError as exc:
        sys.exit(f"make_figures: error: {exc}")
