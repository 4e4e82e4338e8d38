"""Hostile YAML is refused in seconds and in bounded memory: time and peak RSS per case.

    python benchmarks/bench_hostile_yaml.py [--max-seconds 10] [--max-mb 400]

Each case is a suite written to a temporary folder and checked with ``avharness validate`` in a
fresh process (``python -m avharness.cli``), so the numbers include interpreter start-up and the
imports (torch among them: most of the resident memory). Per case it prints the exit status, wall
seconds, the child's peak resident memory (``os.wait4``'s ``ru_maxrss``; mostly the imports), the
peak Python memory of ``validate`` itself (tracemalloc, started after the imports: what the suite
cost) and the first words of its one-line error. Cases:

- ``baseline``: ``suites/quickstart.yaml`` as shipped (valid; the cost of start-up alone);
- ``bomb-in-param``: a "billion laughs" alias bomb (9 levels of 9 aliases: 9^9 ≈ 387 million
  values when expanded) inside a plugin parameter, the case that used to grow to gigabytes;
- ``bomb-unknown-key``: the same bomb under an unknown top-level key;
- ``20mb``: a 20 MB suite (refused from its size, before parsing);
- ``5mb-structured``: 5 MB of small nested mappings (refused from its size);
- ``near-limit``: just under the 256 KiB size limit, all small flow mappings (parsed until the
  expanded-node limit stops it: the worst case that gets past the size check).

Exits 1 when a hostile case is not refused (exit 2), takes longer than ``--max-seconds`` or costs
more than ``--max-mb`` of Python memory. Not a timed test: run it by hand.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = (ROOT / "suites" / "quickstart.yaml").read_text()


def bomb(levels: int = 9, width: int = 9) -> str:
    lines = [f"a0: &a0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def cases() -> dict[str, str]:
    b = bomb()
    # the bomb's anchors under a harmless key, then an alias to the top level inside an attack parameter
    in_param = "description: x\n" + QUICKSTART.replace("attacks:\n", "attacks:\n  - {plugin: fgsm, name: bomb, "
                                                        "eps_steps: *a9}\n", 1)
    in_param = "x_anchors:\n" + "".join("  " + line + "\n" for line in b.splitlines()) + in_param
    structured = "".join(f"k{i}: {{a: {i}, b: [1, 2, {{c: d}}]}}\n" for i in range(200_000))
    near = "".join(f"k{i}: {{a: 1, b: 2}}\n" for i in range(12_000))
    return {
        "baseline": QUICKSTART,
        "bomb-in-param": in_param,
        "bomb-unknown-key": QUICKSTART + b,
        "20mb": QUICKSTART + "pad: " + "x" * (20 << 20) + "\n",
        "5mb-structured": structured[: 5 << 20].rsplit("\n", 1)[0] + "\n",
        "near-limit": near,
    }


#: run in the child: the CLI imported first (torch and all), then ``validate`` under tracemalloc, whose peak
#: is the memory the suite itself cost (the process peak is mostly the imports)
CHILD = """
import sys, tracemalloc
from avharness.cli import main
tracemalloc.start()
code = main(["validate", sys.argv[1]])
print(f"tracemalloc-peak {tracemalloc.get_traced_memory()[1]}", file=sys.stderr)
sys.exit(code)
"""


def measure(path: Path) -> tuple[int, float, float, float, str]:
    with tempfile.TemporaryFile() as err:
        t = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path)],
                                stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT,
                                env={**os.environ, "AVHARNESS_DISABLE_PLUGIN_AUTOLOAD": "1"})
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (peak RSS in kB on Linux)
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        lines = err.read().decode(errors="replace").strip().splitlines()
    extra = next((int(x.split()[1]) for x in lines if x.startswith("tracemalloc-peak ")), 0) / 2**20
    lines = [x for x in lines if not x.startswith("tracemalloc-peak ")]
    return proc.returncode, wall, usage.ru_maxrss / 1024, extra, (lines[-1] if lines else "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--max-seconds", type=float, default=10.0)
    ap.add_argument("--max-mb", type=float, default=100.0, help="largest Python memory peak of validate itself")
    args = ap.parse_args()
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'case':<18} {'bytes':>11} {'exit':>4} {'seconds':>8} {'RSS MB':>7} {'suite MB':>8}  message")
        for name, text in cases().items():
            path = Path(tmp) / f"{name}.yaml"
            path.write_text(text)
            code, wall, peak, extra, msg = measure(path)
            hostile = name != "baseline"
            bad = hostile and (code != 2 or wall > args.max_seconds or extra > args.max_mb)
            failed |= bad
            short = msg.replace(str(path), f"{name}.yaml").replace("avharness: error: ", "")[:90]
            print(f"{name:<18} {len(text.encode()):>11,} {code:>4} {wall:>8.2f} {peak:>7.0f} {extra:>8.1f}  {short}"
                  + ("  <-- FAIL" if bad else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
