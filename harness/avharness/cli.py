"""The ``avharness`` command: run, validate, list, check.

User errors print one line and exit 2; an interrupted run keeps its finished cells and exits 130.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
import time
from pathlib import Path

from .errors import UserError

EXIT_USER = 2
EXIT_INTERRUPTED = 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="avharness", description="Adversarial robustness of audio, video and audio-visual models.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run a suite and write its report")
    r.add_argument("suite", help="suite YAML file, e.g. suites/quickstart.yaml")
    r.add_argument("-o", "--output", help="output folder (default: reports/<suite name>)")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a suite value, e.g. --set eval.limit=100 or --set defenses.0.epochs=2")
    r.add_argument("--limit", type=int, help="evaluate only the first N samples (testing only; recorded in the report)")
    r.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override the suite's device")
    r.add_argument("--executor", choices=["local", "ray"],
                   help="where to run: in this process (local) or as Ray tasks (ray); overrides the suite's executor")
    r.add_argument("--address", help="with --executor ray: the Ray cluster to join ('auto': the one this machine "
                   "belongs to); without it a local Ray cluster is started and stopped")
    r.add_argument("--num-cpus", type=int, help="with --executor ray and no --address: CPUs of the local Ray cluster")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bars or log lines")
    r.add_argument("--strict", action="store_true", help="exit 1 when a validity check in the report fails (for CI)")

    v = sub.add_parser("validate", help="check a suite without running it")
    v.add_argument("suite")
    v.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    v.add_argument("--plan", action="store_true",
                   help="compile the plan (reads the data's manifests, builds every model once) and print its "
                        "training units and cells, which are already in the store, and which are skipped and why")
    v.add_argument("-o", "--output", help="output folder whose store --plan looks in (default: reports/<suite name>)")
    v.add_argument("--limit", type=int, help="as for run: evaluate only the first N samples")

    ls = sub.add_parser("list", help="list installed plugins with their distribution")
    ls.add_argument("kind", nargs="?", choices=["dataset", "model", "attack", "defense", "metric"])

    pl = sub.add_parser("plugin", help="plugin tools for authors")
    plsub = pl.add_subparsers(dest="plugin_command", required=True)
    pc = plsub.add_parser("check", help="run the contract tests on a plugin; exit 1 when one fails")
    pc.add_argument("name", help="plugin name, as in `avharness list`")
    pc.add_argument("--kind", choices=["dataset", "model", "attack", "defense", "metric"], help="when the name is ambiguous")
    pc.add_argument("--data", default="avdigits", help="dataset whose task and specs models are checked on (default avdigits)")
    pc.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                    help="a plugin parameter (VALUE read as YAML), e.g. --param steps=20")
    pc.add_argument("--data-param", action="append", default=[], metavar="KEY=VALUE",
                    help="a parameter of the --data dataset, e.g. --data-param root=/data/audioset")

    d = sub.add_parser("data", help="dataset tools")
    dsub = d.add_subparsers(dest="data_command", required=True)
    ds = dsub.add_parser("stats", help="compute a suite dataset's feature normalisation statistics (mean, std)")
    ds.add_argument("suite")
    ds.add_argument("-o", "--output", required=True, help="where to write the statistics (JSON)")
    ds.add_argument("--split", default="train", help="split to compute them on (default train; never the eval split "
                    "you report on, unless you mean to)")
    ds.add_argument("--limit", type=int, help="use only the first N clips of the split")
    ds.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")

    m = sub.add_parser("model", help="model tools")
    msub = m.add_subparsers(dest="model_command", required=True)
    mi = msub.add_parser("init", help="write seeded, randomly initialised weights for every model of a suite "
                         "(a starting point, or stand-ins for real checkpoints in a dry run)")
    mi.add_argument("suite")
    mi.add_argument("-o", "--output", required=True, help="folder for <model name>.pt files")
    mi.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")

    c = sub.add_parser("check", help="compare a report with a baseline; exit 1 when a metric moved")
    c.add_argument("report", help="report.json (or its folder)")
    c.add_argument("--baseline", required=True, help="baseline report.json")
    c.add_argument("--tolerance", type=float, default=0.0, help="allowed absolute change per metric (default 0)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        commands = {"run": cmd_run, "validate": cmd_validate, "list": cmd_list, "check": cmd_check, "plugin": cmd_plugin,
                    "data": cmd_data, "model": cmd_model}
        return commands[args.command](args)
    except UserError as exc:
        print(f"avharness: error: {exc}", file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        print("avharness: interrupted; finished cells and checkpoints are kept in the store — "
              "run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED


def cmd_run(args) -> int:
    from .executor import run_suite
    from .progress import Reporter
    from .report import write_report
    from .store import ensure_writable
    from .suite import load_suite

    if args.limit is not None and args.limit < 1:
        raise UserError("--limit must be at least 1")
    if args.num_cpus is not None and args.num_cpus < 1:
        raise UserError("--num-cpus must be at least 1")
    suite = load_suite(args.suite, args.overrides)
    out = Path(args.output) if args.output else Path("reports") / suite.name
    ensure_writable(out)
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    reporter = Reporter(enabled=not args.quiet)
    with reporter:
        res = run_suite(suite, out, device=args.device, limit=args.limit, reporter=reporter, executor=args.executor,
                        address=args.address, num_cpus=args.num_cpus)
        t = time.perf_counter()
        report = write_report(res, out, started)
    report_s = time.perf_counter() - t
    reused = sum(c["reused"] for c in report["cells"])
    print(f"wrote {out / 'report.json'} and {out / 'report.md'}: {len(report['cells'])} cells "
          f"({reused} reused), {report['stages']['total_s'] + report_s:.1f}s")
    failed = [c for c in report["checks"] if c["status"] == "fail"]
    for c in failed:
        print(f"check failed: {c['name']} ({c['subject']}): value {c['value']}, threshold {c['threshold']} — {c['doc']}",
              file=sys.stderr)
    return 1 if failed and args.strict else 0


def cmd_validate(args) -> int:
    from .components import check_plugins
    from .plugins import get_registry
    from .suite import load_suite

    suite = load_suite(args.suite, args.overrides)
    if args.plan:
        from .plan import compile_plan
        from .store import Store

        plan = compile_plan(suite, get_registry(), limit=args.limit)
        out = Path(args.output) if args.output else Path("reports") / suite.name
        print(f"{args.suite}: valid; plan (store {out / 'store'}):")
        print("\n".join(plan.describe(Store(out / "store"))))
        return 0
    check_plugins(suite, get_registry())
    n_eps = sum(t.steps for t in suite.threats)
    print(f"{args.suite}: valid — {len(suite.models)} models × {len(suite.defenses)} defenses × "
          f"{len(suite.attacks)} attacks × {n_eps} threat budgets (before skipping threats a model cannot take)")
    return 0


def cmd_list(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from .plugins import KINDS, get_registry

    reg = get_registry()
    table = Table("kind", "name", "distribution", "version", "module")
    for kind in [args.kind] if args.kind else KINDS:
        for name in reg.names(kind):
            e = reg.entries[kind][name]
            table.add_row(kind, name, e.dist, e.version, e.module)
    for (kind, name), entries in reg.conflicts.items():
        table.add_row(kind, name, " & ".join(e.dist for e in entries), "", "CONFLICT: registered twice")
    Console(width=None if sys.stdout.isatty() else 140).print(table)
    return 0  # plugins that failed to load were already reported on stderr by get_registry


def cmd_plugin(args) -> int:
    from .conformance import check_plugin
    from .plugins import get_registry
    from .suite import parse_assignment

    def read(items, flag):
        return dict(parse_assignment(item, flag, "steps=20") for item in items)

    results = check_plugin(args.name, get_registry(), kind=args.kind, data=args.data, params=read(args.param, "--param"),
                           data_params=read(args.data_param, "--data-param"))
    for name, ok, detail in results:
        print(f"{'PASS' if ok else 'FAIL'}  {name}" + (f"  ({detail})" if detail else ""))
    failed = sum(not ok for _, ok, _ in results)
    print(f"{args.name}: {len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


def cmd_data(args) -> int:
    from .components import build_dataset
    from .plugins import get_registry
    from .store import atomic_write_json, ensure_writable
    from .suite import load_suite

    suite = load_suite(args.suite, args.overrides)
    dataset = build_dataset(suite, get_registry())
    if not hasattr(dataset, "feature_stats"):
        raise UserError(f"dataset {suite.data.plugin!r} computes no feature statistics (it has no feature_stats "
                        "method); its features need none or come normalised")
    if args.split not in dataset.splits():
        raise UserError(f"dataset {suite.data.plugin!r} has no split {args.split!r}; it has: {', '.join(dataset.splits())}"
                        " (choose one with --split)")
    if args.limit is not None and args.limit < 1:
        raise UserError("--limit must be at least 1")
    out = Path(args.output)
    ensure_writable(out.parent if str(out.parent) else Path("."))
    stats = dataset.feature_stats(args.split, limit=args.limit)
    atomic_write_json(out, stats)
    shown = {k: v for k, v in stats.items() if isinstance(v, (int, float, str))}
    print(f"wrote {out}: " + ", ".join(f"{k} {v}" for k, v in shown.items()))
    return 0


def cmd_model(args) -> int:
    from .components import build_component, build_dataset, check_params
    from .model import save_state_dict
    from .plugins import get_registry, unknown_message
    from .seeding import derive_seed, seed_everything
    from .store import ensure_writable
    from .suite import _Where, load_suite

    suite = load_suite(args.suite, args.overrides)
    registry = get_registry()
    dataset = build_dataset(suite, registry)
    w = _Where(suite.path)
    for mspec in suite.models:  # every entry's plugin and parameters, before writing anything
        if mspec.plugin not in registry.entries["model"]:
            raise w.error(f"{mspec.where}.plugin", mspec.lines.get("plugin", mspec.lines[""]),
                          unknown_message("model", mspec.plugin, registry.names("model")))
        check_params(w, mspec, registry.get("model", mspec.plugin))
    out = ensure_writable(args.output)
    for i, mspec in enumerate(suite.models):
        seed_everything(derive_seed(suite.seed, "init", mspec.name))
        model = build_component(w, mspec, registry, task=dataset.task, specs=dataset.specs)
        path = out / f"{mspec.name}.pt"
        save_state_dict(model, path)
        print(f"wrote {path} ({sum(p.numel() for p in model.parameters())} parameters): "
              f"--set models.{i}.checkpoint={path}")
    return 0


def cmd_check(args) -> int:
    from .compare import compare, read_report

    if args.tolerance < 0:
        raise UserError("--tolerance must be >= 0")
    problems = compare(read_report(args.report), read_report(args.baseline), args.tolerance)
    if problems:
        print(f"{len(problems)} differences beyond tolerance {args.tolerance:g}:")
        for line in problems:
            print(f"  {line}")
        return 1
    print(f"{args.report}: every metric within {args.tolerance:g} of {args.baseline}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
