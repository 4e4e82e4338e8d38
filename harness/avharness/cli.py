"""The ``avharness`` command: run, validate, list, check, compare, baseline, report (re-render), plugin, data, model.

Exit codes: 0 ok; 1 a check or gate failed; 2 the user's mistake (one line); 3 a plugin broke its
contract or raised (one line naming it); 130 interrupted (finished cells are kept). ``--traceback``
shows the full trace; ``-v`` shows log lines (``-vv`` debug lines); ``--disable-plugin DIST`` skips a
distribution's plugins.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import logging
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import PluginError, UserError

if TYPE_CHECKING:
    from .suite import Suite

EXIT_USER = 2
EXIT_PLUGIN = 3
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse whose mistakes are one line (``avharness: error: ...``, exit 2), like every other user error."""

    def error(self, message: str):
        if "required: command" in message or message.endswith("required: plugin_command") or \
                message.endswith("required: data_command") or message.endswith("required: model_command"):
            choices = next((a.choices for a in self._actions if isinstance(a, argparse._SubParsersAction)), {})
            message = f"no command given; choose one of {', '.join(choices)}"
        raise UserError(f"{message} (see `{self.prog} --help`)")


def _global_flags(p: argparse.ArgumentParser, default=None) -> argparse.ArgumentParser:
    """The flags every command takes, before or after the command name."""
    d = argparse.SUPPRESS if default is None else None
    p.add_argument("--traceback", action="store_true", default=d if d else False,
                   help="show the full trace of an error (for plugin authors)")
    p.add_argument("-v", "--verbose", action="count", default=d if d else 0,
                   help="log lines through the logging module on stderr (-vv: debug lines too)")
    p.add_argument("--disable-plugin", dest="disable_plugin", action="append", default=d if d else [], metavar="DIST",
                   help="skip this distribution's plugins (repeatable; also AVHARNESS_DISABLE_PLUGINS=a,b)")
    return p


_COMMON = _global_flags(argparse.ArgumentParser(add_help=False))


# Long on purpose: a flat, declarative table of every command and flag, read top to bottom as the
# CLI's reference; split per command it would scatter what `avharness --help` shows in one place.
def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="avharness", description="Adversarial robustness of audio, video and audio-visual models.")
    _global_flags(p, default=True)
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", parents=[_COMMON], help="run a suite and write its report")
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
    _lock_args(r)

    v = sub.add_parser("validate", parents=[_COMMON], help="check a suite without running it")
    v.add_argument("suite")
    v.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    v.add_argument("--plan", action="store_true",
                   help="compile the plan (reads the data's manifests, builds every model once) and print its "
                        "training units and cells, which are already in the store, and which are skipped and why")
    v.add_argument("-o", "--output", help="output folder whose store --plan looks in (default: reports/<suite name>)")
    v.add_argument("--limit", type=int, help="as for run: evaluate only the first N samples")

    ls = sub.add_parser("list", parents=[_COMMON], help="list installed plugins with their distribution")
    ls.add_argument("kind", nargs="?", choices=["dataset", "model", "attack", "defense", "metric"])

    pl = sub.add_parser("plugin", parents=[_COMMON], help="plugin tools for authors")
    plsub = pl.add_subparsers(dest="plugin_command", required=True)
    pc = plsub.add_parser("check", parents=[_COMMON], help="run the contract tests on a plugin; exit 1 when one fails")
    pc.add_argument("name", help="plugin name, as in `avharness list`")
    pc.add_argument("--kind", choices=["dataset", "model", "attack", "defense", "metric"], help="when the name is ambiguous")
    pc.add_argument("--data", default="avdigits", help="dataset whose task and specs models are checked on (default avdigits)")
    pc.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                    help="a plugin parameter (VALUE read as YAML), e.g. --param steps=20")
    pc.add_argument("--data-param", action="append", default=[], metavar="KEY=VALUE",
                    help="a parameter of the --data dataset, e.g. --data-param root=/data/audioset")

    pn = plsub.add_parser("new", parents=[_COMMON], help="write a new plugin distribution (pyproject with the entry point, "
                          "a working minimal plugin, a conformance test, a README)")
    pn.add_argument("name", help="the plugin's name, a Python identifier, e.g. my_attack")
    pn.add_argument("--kind", required=True, choices=["dataset", "model", "attack", "defense", "metric"])
    pn.add_argument("-o", "--output", help="folder to write (default ./avharness-NAME)")

    d = sub.add_parser("data", parents=[_COMMON], help="dataset tools")
    dsub = d.add_subparsers(dest="data_command", required=True)
    ds = dsub.add_parser("stats", parents=[_COMMON],
                         help="compute a suite dataset's feature normalisation statistics (mean, std)")
    ds.add_argument("suite")
    ds.add_argument("-o", "--output", required=True, help="where to write the statistics (JSON)")
    ds.add_argument("--split", default="train", help="split to compute them on (default train; never the eval split "
                    "you report on, unless you mean to)")
    ds.add_argument("--limit", type=int, help="use only the first N clips of the split")
    ds.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")

    m = sub.add_parser("model", parents=[_COMMON], help="model tools")
    msub = m.add_subparsers(dest="model_command", required=True)
    mi = msub.add_parser("init", parents=[_COMMON], help="write seeded, randomly initialised weights for every model of a suite "
                         "(a starting point, or stand-ins for real checkpoints in a dry run)")
    mi.add_argument("suite")
    mi.add_argument("-o", "--output", required=True, help="folder for <model name>.pt files")
    mi.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    _lock_args(mi)

    rp = sub.add_parser("report", parents=[_COMMON], help="render a finished run's report.md / report.html again "
                        "from its report.json and samples.jsonl, running nothing")
    rp.add_argument("run_dir", help="the run's output folder (or its report.json)")
    rp.add_argument("--format", choices=["html", "md", "all"], default="all",
                    help="what to write: report.html (with plots/), report.md (with plots/), or both (default)")

    c = sub.add_parser("check", parents=[_COMMON], help="gate a report on a baseline: exit 0 no regression, 1 a value regressed, "
                       "2 not comparable or a usage error",
                       description="Compare a report with a baseline of the same suite on the same samples, cell by "
                       "cell and value by value. Only regressions fail (each value's direction is declared); "
                       "improvements are listed and pass. Exit codes: 0 no regression, 1 regression, 2 the reports "
                       "are not comparable (other samples, seed, success rule, suite) or the command is wrong.")
    c.add_argument("report", help="report.json (or its folder)")
    c.add_argument("--baseline", required=True, help="baseline report.json, e.g. reports/baselines/quickstart.json")
    c.add_argument("--tolerance", action="append", default=[], metavar="[NAME=]X",
                   help="allowed absolute change: a bare number is the default for every value (0 unless given); "
                        "NAME=X for one value or a glob of values (robust_accuracy=0.02, '*_snr_db_mean=0.5'); repeatable")
    c.add_argument("--two-sided", action="store_true", help="any move beyond tolerance fails, better or worse "
                   "(exact-reproduction gates)")
    c.add_argument("--test", choices=["mcnemar"], help="accuracies fail only on a significant paired regression: exact "
                   "McNemar per cell on both runs' samples.jsonl, Holm-corrected over the cells")
    c.add_argument("--alpha", type=float, default=0.05, help="family-wise significance level of --test (default 0.05)")
    c.add_argument("--format", choices=["text", "md", "json"], default="text",
                   help="text (default), md (a Markdown table for a pull request or CI job summary), json")

    cm = sub.add_parser("compare", parents=[_COMMON], help="side-by-side Markdown table of reports on the same "
                        "data, with intervals, differences and paired significance")
    cm.add_argument("reports", nargs="+", help="report.json files (or folders); the first is the reference")
    cm.add_argument("--value", dest="values", action="append", default=[], metavar="NAME",
                    help="a value to show (repeatable; default clean_accuracy, robust_accuracy and the reports' headline)")
    cm.add_argument("-o", "--output", help="write the table to this file instead of printing it")

    b = sub.add_parser("baseline", help="committed baselines for regression checks")
    bsub = b.add_subparsers(dest="baseline_command", required=True)
    bu = bsub.add_parser("update", parents=[_COMMON], help="run a suite and copy its report.json and samples.jsonl to "
                         "reports/baselines/<suite name>.json and <suite name>.samples.jsonl")
    bu.add_argument("suite")
    bu.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    bu.add_argument("-o", "--output", help="the run's output folder (default: reports/<suite name>)")
    bu.add_argument("--dir", default="reports/baselines", help="where baselines live (default reports/baselines)")
    bu.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override the suite's device")
    bu.add_argument("-q", "--quiet", action="store_true")
    return p


def _lock_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait", action="store_true",
                   help="when another run holds the output folder, wait for it instead of refusing")
    p.add_argument("--force-unlock", action="store_true",
                   help="remove a lock left in the output folder by a run on another host that is known to be dead")


def _lock(out: Path, args, reporter_log=None):
    from .store import output_lock

    return output_lock(out, wait=args.wait, force_unlock=args.force_unlock, log=reporter_log,
                       command="avharness " + " ".join(sys.argv[1:])[:300])


def default_output(suite: Suite) -> Path:
    """reports/<sanitised suite name>: never outside reports/, whatever the name holds."""
    from .suite import output_name

    reports = Path("reports")
    out = reports / output_name(suite.name)
    if not out.resolve().is_relative_to(reports.resolve()):  # e.g. reports/<name> is a symlink leading out
        raise UserError(f"{suite.path}: name: the default output folder {out} leads outside reports/ "
                        f"(to {out.resolve()}); choose the output folder with -o DIR")
    return out


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted (tests and rich swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _setup(args) -> None:
    from . import plugins

    level = logging.DEBUG if args.verbose >= 2 else logging.INFO if args.verbose else logging.WARNING
    log = logging.getLogger("avharness")
    log.setLevel(level)
    if not any(getattr(h, "_avharness", False) for h in log.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("avharness: %(message)s"))
        handler._avharness = True
        log.addHandler(handler)
    blocked = tuple(args.disable_plugin or ())
    if blocked != plugins._BLOCKED:
        plugins.set_blocked(blocked)


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except UserError as exc:
        print(f"avharness: error: {exc}", file=sys.stderr)
        return EXIT_USER
    _setup(args)
    try:
        commands = {"run": cmd_run, "validate": cmd_validate, "list": cmd_list, "check": cmd_check, "compare": cmd_compare,
                    "baseline": cmd_baseline, "report": cmd_report, "plugin": cmd_plugin, "data": cmd_data,
                    "model": cmd_model}
        return commands[args.command](args)
    except UserError as exc:
        if args.traceback:
            traceback.print_exc()
        print(f"avharness: error: {exc}", file=sys.stderr)
        return EXIT_USER
    except PluginError as exc:
        if args.traceback:
            traceback.print_exc()
        hint = "" if args.traceback else " (a plugin bug; rerun with --traceback for the full trace)"
        print(f"avharness: plugin error: {exc}{hint}", file=sys.stderr)
        return EXIT_PLUGIN
    except KeyboardInterrupt:
        print("avharness: interrupted; finished cells and checkpoints are kept in the store — "
              "run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED


def cmd_run(args: argparse.Namespace) -> int:
    from .executor import compile_for, execute_plan
    from .progress import Reporter
    from .report import write_report
    from .store import check_output_folder, ensure_writable
    from .suite import load_suite

    if args.limit is not None and args.limit < 1:
        raise UserError("--limit must be at least 1")
    if args.num_cpus is not None and args.num_cpus < 1:
        raise UserError("--num-cpus must be at least 1")
    suite = load_suite(args.suite, args.overrides)
    out = check_output_folder(Path(args.output) if args.output else default_output(suite))
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    reporter = Reporter(enabled=not args.quiet)
    t0 = time.perf_counter()
    with reporter, contextlib.ExitStack() as held:
        if out.exists():  # another run may own it: find out before spending time on the plan
            held.enter_context(_lock(out, args))
        # every suite and plugin error is raised here, before a new output folder is created
        plan = compile_for(suite, None, args.device, args.limit, args.executor, args.address, log=reporter.log)
        plan_s = time.perf_counter() - t0
        if not out.exists():
            ensure_writable(out)
            held.enter_context(_lock(out, args))
        res = execute_plan(plan, out, reporter=reporter, plan_s=plan_s, executor=args.executor, address=args.address,
                           num_cpus=args.num_cpus, device=args.device, limit=args.limit)
        t = time.perf_counter()
        report = write_report(res, out, started)
    report_s = time.perf_counter() - t
    reused = sum(c["reused"] for c in report["cells"])
    print(f"wrote {out / 'report.json'}, {out / 'report.md'} and {out / 'report.html'}: {len(report['cells'])} cells "
          f"({reused} reused), {report['stages']['total_s'] + report_s:.1f}s")
    for pair in dict.fromkeys(f"{s['model']} ({s['defense']}) × {s['threat']}: {s['reason']}" for s in report["skipped"]):
        print(f"skipped {pair}")
    failed = [c for c in report["checks"] if c["status"] == "fail"]
    for c in failed:
        print(f"check failed: {c['name']} ({c['subject']}): value {c['value']}, threshold {c['threshold']} — {c['doc']}",
              file=sys.stderr)
    return 1 if failed and args.strict else 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Compile the plan, as a run would, without training or attacking anything."""
    from .plan import compile_plan
    from .plugins import get_registry
    from .store import Store
    from .suite import load_suite

    suite = load_suite(args.suite, args.overrides)
    plan = compile_plan(suite, get_registry(), limit=args.limit)
    if args.plan:
        out = Path(args.output) if args.output else default_output(suite)
        print(f"{args.suite}: valid; plan (store {out / 'store'}):")
        print("\n".join(plan.describe(Store(out / "store"))))
        return 0
    print(f"{args.suite}: valid — {len(plan.units)} training units, {len(plan.cells)} cells, "
          f"{len(plan.skipped)} (model, attack, threat) combinations skipped; --plan lists them")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from .plugins import KINDS, get_registry

    reg = get_registry()
    table = Table("kind", "name", "distribution", "version", "module")
    for kind in [args.kind] if args.kind else KINDS:
        for e in reg.all_entries(kind):
            clash = (kind, e.name) in reg.conflicts
            # a clashing name is listed once per distribution, under the qualified name a suite uses
            table.add_row(kind, e.qualified if clash else e.name, e.dist, e.version,
                          e.module + (f" (name clash: use plugin: {e.qualified})" if clash else ""))
    Console(width=None if sys.stdout.isatty() else 160).print(table)
    for dist in reg.disabled:
        print(f"disabled: {dist} (--disable-plugin or AVHARNESS_DISABLE_PLUGINS)", file=sys.stderr)
    return 0  # plugins that failed to load were already reported on stderr by get_registry


def cmd_plugin(args: argparse.Namespace) -> int:
    if args.plugin_command == "new":
        from .scaffold import new_plugin

        root = new_plugin(args.name, args.kind, args.output)
        print(f"wrote {root}: pip install -e {root} && avharness plugin check {args.name} --kind {args.kind} "
              f"(and pytest {root / 'tests'})")
        return 0
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


def cmd_data(args: argparse.Namespace) -> int:
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


def cmd_model(args: argparse.Namespace) -> int:
    from .components import build_component, build_dataset, check_params
    from .model import save_state_dict
    from .plugins import get_registry, unknown_message
    from .seeding import derive_seed, seed_everything
    from .store import ensure_writable
    from .suite import _Where, load_suite, output_name

    suite = load_suite(args.suite, args.overrides)
    registry = get_registry()
    dataset = build_dataset(suite, registry)
    w = _Where(suite.path)
    for mspec in suite.models:  # every entry's plugin and parameters, before writing anything
        if not registry.has("model", mspec.plugin):
            raise w.error(f"{mspec.where}.plugin", mspec.lines.get("plugin", mspec.lines[""]),
                          unknown_message("model", mspec.plugin, registry.names("model"), registry.failures))
        check_params(w, mspec, registry.get("model", mspec.plugin))
    out = ensure_writable(args.output)
    with _lock(out, args):
        for i, mspec in enumerate(suite.models):
            seed_everything(derive_seed(suite.seed, "init", mspec.name))
            model = build_component(w, mspec, registry, task=dataset.task, specs=dataset.specs)
            path = out / f"{output_name(mspec.name)}.pt"
            save_state_dict(model, path)
            print(f"wrote {path} ({sum(p.numel() for p in model.parameters())} parameters): "
                  f"--set models.{i}.checkpoint={path}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report.build import rerender

    written = rerender(args.run_dir, args.format)
    pages = [p for p in written if p.suffix in (".md", ".html")]
    plots = len(written) - len(pages)
    print(f"wrote {' and '.join(str(p) for p in pages)} ({plots} plots in {Path(pages[0]).parent / 'plots'})")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from . import gate

    tolerances = gate.Tolerances.parse(args.tolerance)  # a bad flag is reported before any file is read
    res = gate.check(gate.load_run(args.report), gate.load_run(args.baseline), tolerances,
                     two_sided=args.two_sided, test=args.test, alpha=args.alpha)
    render = {"text": gate.render_text, "md": gate.render_md, "json": gate.render_json}[args.format]
    print(render(res))
    return gate.EXIT_REGRESSION if res["failed"] else gate.EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    from . import gate
    from .store import atomic_write_text

    table = gate.compare_runs([gate.load_run(r) for r in args.reports], args.values)
    if args.output:
        atomic_write_text(args.output, table)
        print(f"wrote {args.output}")
    else:
        print(table, end="")
    return 0


def cmd_baseline(args: argparse.Namespace) -> int:
    import gzip
    import shutil

    from .store import ensure_writable
    from .suite import load_suite

    suite = load_suite(args.suite, args.overrides)
    out = Path(args.output) if args.output else default_output(suite)
    run_args = argparse.Namespace(suite=args.suite, output=str(out), overrides=args.overrides, limit=None,
                                  device=args.device, quiet=args.quiet, strict=True, wait=False, force_unlock=False,
                                  executor=None, address=None, num_cpus=None)
    if cmd_run(run_args) != 0:
        print(f"avharness: not updating the baseline: a validity check of the run failed (see {out / 'report.md'})",
              file=sys.stderr)
        return 1
    dest = ensure_writable(args.dir)
    shutil.copyfile(out / "report.json", dest / f"{suite.name}.json")
    # gzip keeps a committed baseline small (samples.jsonl is ~12 MB for the quickstart); mtime 0: same bytes
    (dest / f"{suite.name}.samples.jsonl.gz").write_bytes(gzip.compress((out / "samples.jsonl").read_bytes(), mtime=0))
    print(f"baseline: wrote {dest / (suite.name + '.json')} and {dest / (suite.name + '.samples.jsonl.gz')}; "
          "commit both (reports/README.md says when to refresh them)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
