"""Running a plan as Ray tasks (``executor: ray`` in a suite, or ``avharness run --executor ray``).

The driver (the ``avharness run`` process) compiles the plan, as the local executor does, and owns
the store: every result comes back to it and it writes it, atomically, under the key the plan
computed, so a Ray run and a local run of the same suite share and reuse each other's checkpoints
and cells. Workers compute and return; they never write the driver's store.

- One task per training unit: it trains (or, for ``defense: none``, loads the starting weights)
  into a scratch folder on its node and returns the checkpoint's files (``model.pt``,
  ``model.json``, ``fit.json``) as bytes; the driver writes them into ``store/models/<key>/``
  (``fit.json`` last, which marks a checkpoint complete). The output folder therefore needs no
  shared filesystem; a unit already in the store is read by the driver and handed to the cell tasks
  through Ray's object store instead of being trained.
- One task per cell (``num_returns=2``: the cell and its sweep state). With ``eval.reuse_sweep``,
  a step of a nested sweep takes the previous step's state as an argument, so Ray runs a sweep's
  steps in order while different sweeps, attacks and models run side by side.
- One task per unit for model-scope metrics (latent geometry), when the suite has any.
- Resources per task from the suite's ``resources`` (default ``{num_cpus: 1}``).

Workers rebuild the plan from the suite (the ``Suite`` object is sent; the plugin registry is
per process, so each worker loads plugins itself through ``get_registry()``) and read the data
through the dataset plugin, from the same path the suite names: **every node must see the data at
that path** (a shared filesystem, or the same copy on every node). A worker whose plan differs
from the driver's (its data missing, different, or a plugin not installed there) stops the run with
one line naming its node and what it could not read.

The driver writes each result as it arrives (``ray.wait``), so Ctrl-C or a lost worker loses no
finished result: Ray retries a task whose worker died (``max_retries``), and a rerun resumes from
the store. Cells are deterministic (per-sample random streams), so a retried task or a rerun gives
the same numbers as the local executor.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from . import sweep
from .errors import NumericalError, UserError
from .plan import Plan
from .progress import Reporter
from .report.checks import probe_model
from .report.records import make_cell
from .store import Store, atomic_write_bytes

if TYPE_CHECKING:
    from .executor import RunResult, Stages

CHECKPOINT_FILES = ("model.pt", "model.json", "fit.json")  # fit.json last: it marks a checkpoint complete
#: a worker process keeps the plan and the models of the run it last worked for
_WORKER: dict = {}


def import_ray() -> ModuleType:
    try:
        import ray
    except ImportError:
        raise UserError('the ray executor needs Ray, which is not installed: pip install "avharness[ray]"') from None
    return ray


def _node() -> str:
    try:
        import ray

        ip = ray.util.get_node_ip_address()
    except Exception:
        ip = "?"
    return f"{socket.gethostname()} ({ip})"


def driver_device(requested: str) -> str:
    """The driver only loads models to probe them: on a driver without CUDA it uses the CPU, workers still CUDA."""
    import torch

    return "cpu" if requested == "cuda" and not torch.cuda.is_available() else requested


# --- what runs on a worker --------------------------------------------------------------------

def _worker_plan(job: dict) -> dict:
    """The plan (rebuilt here once per run and process) and this process's loaded models."""
    if _WORKER.get("id") != job["id"]:
        from .plan import compile_plan
        from .plugins import get_registry

        _WORKER.clear()
        # CPU kernels split their reductions by thread count (batch norm, parallel sums), so a model
        # trained with 1 thread differs in its last bits from one trained with 2. Ray starts workers
        # with OMP_NUM_THREADS = the task's num_cpus; run with the driver's count instead, so a Ray
        # run gives the local executor's numbers (AVHARNESS_THREADS=N sets both: N = num_cpus per
        # task avoids oversubscribing the nodes).
        import torch

        torch.set_num_threads(job["threads"])
        try:
            plan = compile_plan(job["suite"], get_registry(), job["device"], job["limit"])
        except UserError as exc:
            raise UserError(f"Ray worker on node {_node()}: {exc} (every node must see the suite's data and "
                            "checkpoints at the same paths as the driver: a shared filesystem)") from None
        keys = [c.key for c in plan.cells] + [u.key for u in plan.units]
        if keys != job["keys"]:
            raise UserError(f"Ray worker on node {_node()} compiled a different plan than the driver (its data "
                            f"under {job['suite'].data.params or job['suite'].data.plugin} or its installed plugins "
                            "differ); every node must see the same data and plugins")
        _WORKER.update(id=job["id"], plan=plan, trained={})
    return _WORKER


def _trained(job: dict, unit_index: int, ckpt: dict):
    """The unit's model on this worker, loaded once from the checkpoint files the driver sent."""
    from .executor import Trained
    from .model import load_model

    w = _worker_plan(job)
    plan = w["plan"]
    unit = plan.units[unit_index]
    if unit.key not in w["trained"]:
        import json

        with tempfile.TemporaryDirectory(prefix="avharness-ckpt-") as tmp:
            for name, data in ckpt.items():
                (Path(tmp) / name).write_bytes(data)
            model = load_model(tmp).to(plan.device).eval()
        # one unit at a time per worker: a worker holds one model's weights, not every unit's
        w["trained"] = {unit.key: Trained(unit, model, json.loads(ckpt["fit.json"]), True, Path(tmp))}
    return plan, w["trained"][unit.key]


def _wrap_errors(returns: int = 1):
    """User and numerical errors travel back as values: the driver prints them as the one line they are."""
    def wrap(fn):
        def run(*args):
            try:
                return fn(*args)
            except (UserError, NumericalError) as exc:
                failure = _Failure(type(exc).__name__, str(exc))
                return failure if returns == 1 else (failure,) * returns
        run.__name__ = fn.__name__
        return run
    return wrap


class _Failure:
    def __init__(self, kind: str, message: str):
        self.kind, self.message = kind, message

    def raise_(self):
        raise (NumericalError if self.kind == "NumericalError" else UserError)(self.message)


@_wrap_errors()
def train_task(job: dict, unit_index: int) -> dict:
    from .executor import train_or_load

    plan = _worker_plan(job)["plan"]
    unit = plan.units[unit_index]
    with tempfile.TemporaryDirectory(prefix="avharness-train-") as tmp:
        store = Store(tmp)
        train_or_load(plan, unit, store, Reporter(enabled=False))
        return {name: (store.model_dir(unit.key) / name).read_bytes() for name in CHECKPOINT_FILES}


@_wrap_errors(returns=2)
def cell_task(job: dict, unit_index: int, cell_index: int, ckpt: dict, prior: bytes | None) -> tuple[dict, bytes | None]:
    from .executor import LocalExecutor

    plan, tr = _trained(job, unit_index, ckpt)
    pc = plan.cells[cell_index]
    with tempfile.TemporaryDirectory(prefix="avharness-cell-") as tmp:
        state = sweep.SweepState.from_bytes(prior) if prior is not None else None
        return LocalExecutor(Store(tmp)).compute(plan, tr, pc, state)


@_wrap_errors()
def model_metrics_task(job: dict, unit_index: int, ckpt: dict) -> dict:
    from .executor import _model_metrics

    plan, tr = _trained(job, unit_index, ckpt)
    with tempfile.TemporaryDirectory(prefix="avharness-mm-") as tmp:
        _model_metrics(plan, tr, Store(tmp), Reporter(enabled=False))
        root = Path(tmp)
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*.json")}


# --- the driver -------------------------------------------------------------------------------

class RayExecutor:
    """Runs a plan's units and cells as Ray tasks; this process writes every result into the store."""

    def __init__(self, store: Store, reporter: Reporter | None = None, stages: Stages | None = None, *,
                 address: str | None = None, num_cpus: int | None = None, device: str | None = None,
                 limit: int | None = None):
        from .executor import Stages

        self.store, self.reporter, self.stages = store, reporter or Reporter(enabled=False), stages or Stages()
        self.address, self.num_cpus, self.device, self.limit = address, num_cpus, device, limit

    def run(self, plan: Plan, started: float | None = None) -> RunResult:
        ray = import_ray()
        started = time.perf_counter() if started is None else started
        started_here = not ray.is_initialized()
        if started_here:
            env = {k: v for k, v in os.environ.items() if k.startswith("AVHARNESS_")}
            if self.address is None:  # a local cluster: its workers see this process's import path
                env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
            kwargs = {"address": self.address} if self.address else {"num_cpus": self.num_cpus, "include_dashboard": False}
            try:
                ray.init(runtime_env={"env_vars": env}, logging_level="ERROR", log_to_driver=False, **kwargs)
            except ConnectionError as exc:
                raise UserError(f"--address {self.address}: cannot join a Ray cluster ({exc})") from None
        try:
            return self._run(ray, plan, started)
        finally:
            if started_here:
                ray.shutdown()

    # Long on purpose: the driver's event loop (submit the units, chain each unit's cells on its
    # checkpoint, write every result into the store as ray.wait returns it, cancel on Ctrl-C) shares
    # its bookkeeping (pending refs, what was stored before) across every step; split, that state
    # would have to become an object of its own for one caller.
    def _run(self, ray, plan: Plan, started: float):
        from .executor import RunResult, _model_metrics, train_or_load

        suite, store, log = plan.suite, self.store, self.reporter.log
        opts = {"num_cpus": 1, **suite.resources, "max_retries": 3}
        remote = {f.__name__: ray.remote(f).options(**opts) for f in (train_task, model_metrics_task)}
        remote_cell = ray.remote(cell_task).options(num_returns=2, **opts)
        import torch

        job = ray.put({"id": f"{os.getpid()}-{time.time_ns()}", "suite": suite, "device": self.device or suite.device,
                       "threads": torch.get_num_threads(),
                       "limit": self.limit, "keys": [c.key for c in plan.cells] + [u.key for u in plan.units]})
        index = {id(u): i for i, u in enumerate(plan.units)}
        cell_index = {id(c): i for i, c in enumerate(plan.cells)}
        stored_before = {c.key for c in plan.cells if store.has_cell(c.key)}
        trained_before = {u.key for u in plan.units if store.has_model(u.key)}
        pending: dict = {}
        trained: dict = {}
        states: dict = {}
        t_train = time.perf_counter()

        def unit_ready(unit, ckpt_ref):
            with self.stages("checks"):
                tr = train_or_load(plan, unit, store, self.reporter)  # loads what was just written
                tr.reused = unit.key in trained_before
                first = next(iter(plan.dataset.batches(suite.eval_split, min(suite.batch_size, plan.eval_n),
                                                       limit=plan.eval_n)))
                tr.probe = probe_model(tr.model, plan.dataset.task, first.to(plan.device))
            trained[unit.key] = tr
            if plan.model_metrics:
                pending[remote["model_metrics_task"].remote(job, index[id(unit)], ckpt_ref)] = ("metrics", unit, None)
            for pc in plan.cells_of(unit):
                if pc.key not in stored_before:
                    submit(pc, ckpt_ref)

        def submit(pc, ckpt_ref):
            prior = None
            prev = sweep.previous(plan, pc)
            if prev is not None:
                prior = states.get(prev.key)
                if prior is None:
                    path = sweep.state_path(store, prev.key)
                    prior = ray.put(path.read_bytes()) if path.exists() else submit(prev, ckpt_ref)
            cell_ref, state_ref = remote_cell.remote(job, index[id(pc.unit)], cell_index[id(pc)], ckpt_ref, prior)
            pending[cell_ref] = ("cell", pc, state_ref)
            states[pc.key] = state_ref
            return state_ref

        try:
            for unit in plan.units:
                if unit.key in trained_before:
                    log(f"model {unit.label}: reusing checkpoint {store.model_dir(unit.key)}")
                    files = {n: (store.model_dir(unit.key) / n).read_bytes() for n in CHECKPOINT_FILES}
                    unit_ready(unit, ray.put(files))
                else:
                    pending[remote["train_task"].remote(job, index[id(unit)])] = ("train", unit, None)
            n_cells = sum(v[0] == "cell" for v in pending.values())
            log(f"ray: {len(plan.units) - len(trained_before)} training tasks, {n_cells}+ cell tasks on "
                f"{int(ray.cluster_resources().get('CPU', 0))} CPUs")
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                ref = done[0]
                kind, what, extra = pending.pop(ref)
                result = ray.get(ref)
                if isinstance(result, _Failure):
                    result.raise_()
                if kind == "train":
                    folder = store.model_dir(what.key)
                    for name in CHECKPOINT_FILES:
                        atomic_write_bytes(folder / name, result[name])
                    log(f"model {what.label}: trained on a Ray worker")
                    self.stages.times["train"] = time.perf_counter() - t_train
                    unit_ready(what, ray.put(result))
                elif kind == "metrics":
                    for rel, data in result.items():
                        if not (store.root / rel).exists():
                            atomic_write_bytes(store.root / rel, data)
                else:
                    cell, state = result, ray.get(extra)
                    if state is not None:
                        sweep.save_state(store, what.key, state)
                    store.save_cell(what.key, cell)
                    log(f"cell {what.label}: done")
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise

        self.stages.times["attack"] = time.perf_counter() - t_train - self.stages.times.get("train", 0.0)
        result = RunResult(plan)
        for unit in plan.units:
            tr = trained[unit.key]
            if plan.model_metrics:
                _model_metrics(plan, tr, store, self.reporter)  # reads what the tasks wrote
            result.trained.append(tr)
            for pc in plan.cells_of(unit):
                cell = store.load_cell(pc.key)
                cell["reused"] = pc.key in stored_before
                result.cells.append(make_cell(cell, model=unit.model.name, defense=unit.defense.name,
                                              attack=pc.attack.name, threat=pc.threat_spec.name))
        self.stages.times["total"] = time.perf_counter() - started
        result.stages = {f"{k}_s": round(v, 3) for k, v in self.stages.times.items()}
        return result
