"""Tuning: measure the knobs of every heavy kernel's schedule and keep the fastest as records.

The search space is lepton-opt's own CPU schedules (:mod:`.cpu_schedule`): each register-tiled
kernel (convolutions, matmuls, the int8 kernels) has a small set of knobs, its
:class:`~lepton_opt.targets.cpu_schedule.Tile` (accumulator rows x vectors, and the order in
which the parallel loop walks the output tiles); 20 to 100 valid tiles per kernel, the default
(rule-based) one first. On 2 cores MetaSchedule's generic search needs hundreds of trials per
kernel to find what these templates start from (``notes/tvm-0.27.md``), so the search here is
over the template's space, exhaustively, best-first by the number of accumulators.

Everything else is MetaSchedule's: tasks come from ``extract_tasks`` on the same fused module
the build schedules, candidates are built by its ``LocalBuilder`` and timed by its
``LocalRunner`` or, with an RPC tracker, its ``RPCRunner`` (remote devices measure while this
host builds), each candidate's schedule is recorded as a MetaSchedule trace, and ``compile``
applies the best record of each kernel with ``MetaScheduleApplyDatabase`` (see
:mod:`.records`).

Where the trials go: first every kernel's default tile is measured (its share of the model's
time is then known: time x number of calls), then the kernel whose best time x calls, halved
for every batch already spent on it, is largest gets the next batch of its untried tiles.
Heavy kernels are explored first and furthest; no kernel is starved. Measurements are merged
into the record store every 30 s and when tuning ends, Ctrl-C included.

How a candidate is timed: one call per repeat, after MetaSchedule's flush of every argument but
the first (the weights come from memory, as in a model run; the input is warm, as its producer
left it), the median of :data:`MEASURE_REPEATS`. Alone, even so, a kernel does not meet the
cache state of a model run, and the fastest tile alone is often not the fastest in the model.
So the last 20% of the budget (:func:`confirm_in_model`) builds the whole model with each
kernel's best four tiles and its default, runs the builds in turn with the VM's per-kernel
instrumentation, and keeps each kernel's fastest tile there: those in-model times become the
kernel's records. (ResNet-50, measured: tuned 0.93x of onnxruntime with the picks timed
alone, 1.00x-1.03x with the picks confirmed in the model; see ``benchmarks/README.md``.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import onnx_ir as ir
import tvm
from tvm import tirx
from tvm.s_tir import meta_schedule as ms

from lepton_opt.errors import LeptonError, OptionError
from lepton_opt.targets import cpu_schedule
from lepton_opt.targets.build import TargetSpec
from lepton_opt.targets.profiling import profile_interleaved
from lepton_opt.targets.records import RecordStore, cache_dir, tile_key

DEFAULT_BATCH = 8
MEASURE_REPEATS = 15  # timed calls per candidate (the median is kept)
# In-model confirmation: the best few tiles of each kernel (and its default), built into the whole
# model and timed there (runs of each build, taken in turn), in the last share of a --budget.
CONFIRM_CANDIDATES = 4
CONFIRM_RUNS = 10
CONFIRM_SHARE = 0.2
MERGE_EVERY_S = 30.0


@dataclasses.dataclass
class RPCSettings:
    """A TVM RPC tracker and the key its measuring devices registered under."""

    host: str
    port: int
    key: str
    session_timeout_s: float = 60.0


def parse_tracker(text: str) -> tuple[str, int]:
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit():
        raise OptionError(f"--rpc-tracker {text!r}: give HOST:PORT, e.g. 127.0.0.1:9190")
    return host, int(port)


@dataclasses.dataclass
class TuneTask:
    """One kernel (a MetaSchedule workload) and what is known of its tiles."""

    name: str
    mod: tvm.IRModule  # the normalized workload: {"main": PrimFunc}
    weight: int  # calls per model run
    rule: str
    tiles: list[cpu_schedule.Tile]
    shash: str
    measured: dict[str, float] = dataclasses.field(default_factory=dict)  # tile key -> seconds
    failed: set[str] = dataclasses.field(default_factory=set)
    default_s: float | None = None
    batches: int = 0
    trials: int = 0  # measured in this run

    @property
    def untried(self) -> list[cpu_schedule.Tile]:
        return [t for t in self.tiles if tile_key(t) not in self.measured and tile_key(t) not in self.failed]

    @property
    def best(self) -> tuple[str, float] | None:
        if not self.measured:
            return None
        key = min(self.measured, key=self.measured.get)
        return key, self.measured[key]

    def priority(self) -> float:
        best = self.best
        if not self.untried:
            return -1.0
        if best is None:
            return float("inf")
        return self.weight * best[1] * 0.5 ** self.batches


@dataclasses.dataclass
class TaskSummary:
    name: str
    rule: str
    weight: int
    tiles: int
    measured: int
    trials: int
    default_ms: float | None
    best_ms: float | None
    best_tile: str | None
    # In-model confirmation: the tile kept and its time per call inside the model (None if the
    # kernel had one candidate or confirmation did not run).
    model_tile: str | None = None
    model_ms: float | None = None
    default_tile: str | None = None

    @property
    def speedup(self) -> float | None:
        if self.default_ms and self.best_ms:
            return self.default_ms / self.best_ms
        return None


@dataclasses.dataclass
class TuneResult:
    """What :func:`tune_model` did. Model times are estimates: the sum over kernels of calls x
    measured kernel time, for the default tiles and for the best ones."""

    target: str
    records: Path
    tasks: list[TaskSummary]
    skipped: dict[str, str]  # kernel -> why it has no knobs to tune
    trials: int
    seconds: float
    interrupted: bool
    improved_workloads: int
    confirmed: int = 0  # kernels whose pick was timed inside the model
    confirm_note: str | None = None  # why confirmation did not run

    @property
    def default_ms(self) -> float:
        return sum(t.weight * t.default_ms for t in self.tasks if t.default_ms is not None)

    @property
    def best_ms(self) -> float:
        return sum(t.weight * (t.best_ms if t.best_ms is not None else t.default_ms or 0.0) for t in self.tasks)


@dataclasses.dataclass
class TuneProgress:
    """Handed to the progress callback after every batch."""

    trials: int
    tasks_started: int
    tasks: int
    default_ms: float
    best_ms: float
    elapsed_s: float
    budget_s: float | None
    trial_budget: int | None
    current: str


def extract_tasks(mod: tvm.IRModule, target: tvm.target.Target) -> tuple[list[TuneTask], dict[str, str]]:
    """The tunable kernels of a lowered Relax module, as the CPU build will see them (after the
    graph passes, legalization and fusion), and the kernels left alone with the reason."""
    with target:
        fused = tvm.transform.Sequential(cpu_schedule._pre_schedule_passes(target))(mod)
    tasks, skipped = [], {}
    for task in ms.relax_integration.extract_tasks(fused, target):
        workload = task.dispatched[0]
        func = workload["main"]
        if not _static(func):
            skipped[task.task_name] = "dynamic shape (fix it with --input-shape)"
            continue
        space = cpu_schedule.tunable_space(func, target)
        if space is None:
            skipped[task.task_name] = "no knobs (element-wise or row reduction: default schedule)"
            continue
        rule, tiles = space
        tasks.append(TuneTask(task.task_name, workload, int(task.weight), rule, tiles,
                              str(ms.database.Workload(workload).as_json()[0])))
    return tasks, skipped


def _static(func: tirx.PrimFunc) -> bool:
    for param in func.params:
        shape = getattr(getattr(param, "ty", None), "shape", None) or []
        if not all(isinstance(d, tirx.IntImm) for d in shape):
            return False
    return True


def _build_candidate(mod, target, _params):
    """MetaSchedule's default build function without its ``import tvm.s_tir.tensor_intrin``,
    which costs ~17 s in every fresh builder process (the builder starts new ones for every
    batch); lepton-opt's candidates are tensorized before they reach the builder. Weight
    layout-rewrite blocks are dropped: the runner allocates the packed weight directly."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return tvm_build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


class _OwnSessionSubprocess:
    """``subprocess`` for TVM's popen pools, whose workers then start in a session of their own:
    Ctrl-C in a terminal reaches the tuning process alone, which stops after the batch in flight
    and keeps the records, instead of every build and measurement worker dying mid-import with a
    traceback of its own."""

    def __getattr__(self, name):
        return getattr(subprocess, name)

    @staticmethod
    def Popen(*args, **kwargs):  # noqa: N802 - stands in for subprocess.Popen
        kwargs.setdefault("start_new_session", True)
        return subprocess.Popen(*args, **kwargs)


@contextlib.contextmanager
def _workers_in_own_session():
    from tvm.support import popen_pool

    saved = popen_pool.subprocess
    popen_pool.subprocess = _OwnSessionSubprocess()
    try:
        yield
    finally:
        popen_pool.subprocess = saved


class _StopOnInterrupt:
    """While tuning, the first Ctrl-C (SIGINT) asks the loop to stop after the batch in flight
    (an interrupt raised inside TVM's builder or runner would surface as a bare RuntimeError
    from its FFI, and lose the batch); a second one interrupts at once."""

    def __init__(self):
        self.requested = False
        self._saved = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._saved = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, _signum, _frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._saved is not None:
            signal.signal(signal.SIGINT, self._saved)


def _check_tracker(rpc: RPCSettings) -> None:
    """Fail fast on an address with no tracker (TVM's client retries for a minute)."""
    try:
        socket.create_connection((rpc.host, rpc.port), timeout=5).close()
    except OSError as e:
        raise OptionError(f"--rpc-tracker {rpc.host}:{rpc.port}: cannot reach an RPC tracker ({e.strerror or e}); "
                          "start one with python -m tvm.exec.rpc_tracker --host HOST --port PORT") from None


class _Measurer:
    """MetaSchedule's builder and runner (local or RPC), and the records of what they measured."""

    def __init__(self, target: tvm.target.Target, rpc: RPCSettings | None, workers: int):
        self.target = target
        self.builder = ms.builder.LocalBuilder(max_workers=workers, timeout_sec=120, f_build=_build_candidate)
        # Weights come from memory in a model run (ResNet-50 holds 100 MB of them, L3 is 32 MB):
        # each repeat is one call after a flush of every argument but the first (the input
        # activation, which its producer just wrote). Timed warm instead (calls repeated for
        # 40 ms), ResNet-50's 1x1 convolutions ran 1.4x-2x faster than in the model and the
        # tiles picked that way lost 7% to the tiles picked cold (records.PROTOCOL).
        evaluator = ms.runner.EvaluatorConfig(number=1, repeat=MEASURE_REPEATS, min_repeat_ms=0,
                                              enable_cpu_cache_flush=True)
        if rpc is None:
            self.runner = ms.runner.LocalRunner(timeout_sec=60, evaluator_config=evaluator)
        else:
            _check_tracker(rpc)
            config = ms.runner.RPCConfig(tracker_host=rpc.host, tracker_port=rpc.port, tracker_key=rpc.key,
                                         session_timeout_sec=rpc.session_timeout_s)
            try:
                servers = config.count_num_servers(allow_missing=True)
            except Exception as e:  # noqa: BLE001 - no tracker at that address
                raise OptionError(f"--rpc-tracker {rpc.host}:{rpc.port}: cannot reach an RPC tracker "
                                  f"({str(e).splitlines()[0][:200]}); start one with python -m tvm.exec.rpc_tracker") from e
            if servers <= 0:
                raise OptionError(f"--rpc-tracker {rpc.host}:{rpc.port}: no device registered under --rpc-key "
                                  f"{rpc.key!r}; start one with python -m tvm.exec.rpc_server --tracker "
                                  f"{rpc.host}:{rpc.port} --key {rpc.key}")
            self.runner = ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator, max_workers=servers)
        self.records: list[ms.database.TuningRecord] = []

    def measure(self, batch: list[tuple[TuneTask, cpu_schedule.Tile]]) -> list[float | None]:
        """Seconds per call of each (task, tile), None where it failed to schedule, build or run."""
        scheduled = []
        for task, tile in batch:
            try:
                sch = cpu_schedule.schedule_with_tile(task.mod["main"], self.target, task.rule, tile)
                args = ms.arg_info.ArgInfo.from_entry_func(sch.mod, remove_preproc=True)
                scheduled.append((sch, args))
            except Exception:  # noqa: BLE001 - this tile does not apply to the kernel
                scheduled.append(None)
        todo = [i for i, s in enumerate(scheduled) if s is not None]
        built = self.builder.build([ms.builder.BuilderInput(scheduled[i][0].mod, self.target) for i in todo])
        runs = [(i, b) for i, b in zip(todo, built) if b.error_msg is None]
        futures = self.runner.run([ms.runner.RunnerInput(b.artifact_path, "cpu", scheduled[i][1]) for i, b in runs])
        seconds: list[float | None] = [None] * len(batch)
        try:
            for (i, _), future in zip(runs, futures):
                result = future.result()
                if result.error_msg is not None or not result.run_secs:
                    continue
                secs = [float(s) for s in result.run_secs]
                seconds[i] = statistics.median(secs)
                task, _tile = batch[i]
                self.records.append(ms.database.TuningRecord(
                    scheduled[i][0].trace, ms.database.Workload(task.mod), secs, self.target, scheduled[i][1]))
        finally:
            for b in built:
                if b.artifact_path:
                    shutil.rmtree(os.path.dirname(b.artifact_path), ignore_errors=True)
        return seconds

    def close(self) -> None:
        pool = getattr(self.runner, "pool", None)
        if pool is not None:
            pool.shutdown()


def _model_inputs(mod: tvm.IRModule) -> list | None:
    """Seeded inputs for ``mod["main"]`` (floats normal, integers and booleans 0: valid token ids
    and masks), or None if a shape is not static."""
    import numpy as np

    rng = np.random.default_rng(0)
    inputs = []
    for param in mod["main"].params:
        info = getattr(param, "ty", None)
        shape = getattr(info, "shape", None)
        if not isinstance(info, tvm.relax.TensorType) or not isinstance(shape, tvm.relax.ShapeExpr):
            return None
        dims = [getattr(d, "value", None) for d in shape.values]
        if any(d is None for d in dims):
            return None
        dtype = str(info.dtype)
        value = (rng.standard_normal(dims).astype(dtype) if dtype.startswith(("float", "bfloat"))
                 else np.zeros(dims, dtype=dtype))
        inputs.append(tvm.runtime.tensor(value))
    return inputs


def confirm_in_model(mod: tvm.IRModule, inputs: list, tasks: list[TuneTask], target: tvm.target.Target,
                     report: Callable[[str], None] | None = None) -> tuple[list[ms.database.TuningRecord], dict]:
    """Time each kernel's best few tiles inside the whole model, and return them as records
    carrying those times, with {kernel name: (tile key, seconds per call)} of the picks.

    Why: a kernel timed alone meets its weights either warm in cache (repeated calls) or flushed
    from every cache; in a model run, what its producer left in cache and what the previous
    kernels evicted decide, and the best tile alone is often not the best there (ResNet-50's 1x1
    convolutions: up to 1.5x apart either way). Build ``i`` takes every kernel's ``i``-th best
    tile (or its last); the builds run in turn on ``inputs``, profiled per kernel."""
    candidates = {}
    for task in tasks:
        tiles = {tile_key(t): t for t in task.tiles}
        keys = [k for k in sorted(task.measured, key=task.measured.get) if k in tiles][:CONFIRM_CANDIDATES]
        default = tile_key(task.tiles[0])
        if default in task.measured and default not in keys:
            keys.append(default)  # the default too: what the build does without records
        if keys:
            candidates[task.name] = [(k, tiles[k]) for k in keys]
    rounds = max((len(c) for c in candidates.values()), default=0)
    if rounds < 2:
        return [], {}
    by_name = {t.name: t for t in tasks}
    built, traces = [], {}
    for i in range(rounds):
        if report is not None:
            report(f"confirming in the model: build {i + 1}/{rounds}")
        database = ms.database.MemoryDatabase()
        for name, cands in candidates.items():
            task = by_name[name]
            key, tile = cands[min(i, len(cands) - 1)]
            sch = cpu_schedule.schedule_with_tile(task.mod["main"], target, task.rule, tile)
            args = ms.arg_info.ArgInfo.from_entry_func(sch.mod, remove_preproc=True)
            workload = database.commit_workload(task.mod)
            database.commit_tuning_record(ms.database.TuningRecord(sch.trace, workload, [1.0], target, args))
            traces[(name, key)] = (sch.trace, args)
        built.append(cpu_schedule.build_cpu(mod, target, database=database))
    if report is not None:
        report(f"confirming in the model: {CONFIRM_RUNS} runs of each of {rounds} builds")
    profiles = profile_interleaved(built, inputs, CONFIRM_RUNS)
    records, picks = [], {}
    for name, cands in candidates.items():
        if len(cands) < 2:
            continue
        timed = {}
        for i, profile in enumerate(profiles):
            key = cands[min(i, len(cands) - 1)][0]
            found = [v for symbol, v in profile.items() if symbol.removesuffix("_prepacked") == name]
            if len(found) != 1 or found[0][1] <= 0:
                break
            seconds, calls = found[0]
            timed.setdefault(key, seconds / calls)
        if len(timed) < 2:
            continue  # not found by name in the built module: the alone-timed records stand
        task = by_name[name]
        workload = ms.database.Workload(task.mod)
        for key, seconds in timed.items():
            trace, args = traces[(name, key)]
            records.append(ms.database.TuningRecord(trace, workload, [seconds], target, args))
        best = min(timed, key=timed.get)
        picks[name] = (best, timed[best])
    return records, picks


def tune_model(model: ir.Model, spec: TargetSpec, *, source: str = "model", budget_s: float | None = None,
               trials: int | None = None, records: str | os.PathLike | None = None, rpc: RPCSettings | None = None,
               batch: int = DEFAULT_BATCH, progress: Callable[[TuneProgress], None] | None = None,
               warn: Callable[[str], None] | None = None, confirm: bool = True) -> TuneResult:
    """Tune the kernels of ``model`` (an IR model after the graph passes) for ``spec``.

    Stops after ``budget_s`` seconds or ``trials`` measured candidates (whichever comes first;
    a batch in flight is finished), when every tile of every kernel has been measured, or on
    Ctrl-C. Records go to ``records`` (a directory) or the user cache of this target; tiles
    measured by earlier runs (of this model or of another sharing kernels) are not measured again.

    With ``confirm`` (and no ``rpc``), the search stops at 80% of ``budget_s`` (or when every
    tile is measured, or after ``trials``) and :func:`confirm_in_model` times each kernel's best
    few tiles inside the whole model; those in-model times replace the kernel's records.
    """
    from lepton_opt.targets.compile import lower_model

    if spec.kind != "llvm":
        raise OptionError("tuning covers --target llvm (CPU) kernels; CUDA builds use dlight's default GPU schedules")
    if budget_s is not None and budget_s <= 0 or trials is not None and trials <= 0:
        raise OptionError("the tuning budget must be positive (--budget 20m, --trials 200)")
    if batch < 1:
        raise OptionError("--batch must be at least 1")
    target = spec.tvm_target()
    store = RecordStore(Path(records) if records is not None else cache_dir(target), warn)
    lowered = lower_model(model, source).mod
    tasks, skipped = extract_tasks(lowered, target)
    # Why the in-model confirmation will not run (None: it will, after the search).
    note = ("not asked for" if not confirm else
            "not with --rpc-tracker (the model would run on this host, not on the measuring devices)"
            if rpc is not None else None)
    inputs = _model_inputs(lowered) if note is None else None
    if note is None and inputs is None:
        note = "the model has dynamic input shapes"
    search_budget = None if budget_s is None else budget_s * (1 - CONFIRM_SHARE if note is None else 1.0)
    known = store.read_explored()
    for task in tasks:
        task.measured.update(known.get(task.shash, {}).get("tiles", {}))
        default_key = tile_key(task.tiles[0])
        task.default_s = task.measured.get(default_key)

    start = time.perf_counter()
    interrupted = False
    done_trials = 0
    last_merge = start
    measurer = None

    def merge() -> int:
        improved = store.merge(measurer.records if measurer else [], target)
        store.merge_explored({t.shash: {"name": t.name, "rule": t.rule, "tiles": t.measured} for t in tasks})
        if measurer:
            measurer.records.clear()
        return improved

    def report(current: str) -> None:
        if progress is None:
            return
        progress(TuneProgress(done_trials, sum(1 for t in tasks if t.trials or t.measured), len(tasks),
                              1e3 * sum(t.weight * t.default_s for t in tasks if t.default_s is not None),
                              1e3 * sum(t.weight * t.best[1] for t in tasks if t.best is not None),
                              time.perf_counter() - start, budget_s, trials, current))

    improved = 0
    session = _workers_in_own_session()
    session.__enter__()
    interrupt = _StopOnInterrupt().__enter__()
    try:
        measurer = _Measurer(target, rpc, max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                              else os.cpu_count() or 1))
        report("starting")
        while not interrupt.requested:
            if search_budget is not None and time.perf_counter() - start >= search_budget:
                break
            if trials is not None and done_trials >= trials:
                break
            # Defaults first (their times say where the model's time is), then by priority.
            pending = [t for t in tasks if t.default_s is None and tile_key(t.tiles[0]) not in t.failed]
            if pending:
                chosen = [(t, t.tiles[0]) for t in pending[:batch]]
            else:
                task = max(tasks, key=TuneTask.priority, default=None)
                if task is None or task.priority() < 0:
                    break  # every tile of every kernel measured
                chosen = [(task, tile) for tile in task.untried[:batch]]
            if trials is not None:
                chosen = chosen[:max(1, trials - done_trials)]
            seconds = measurer.measure(chosen)
            touched = set()
            for (task, tile), secs in zip(chosen, seconds):
                key = tile_key(tile)
                if secs is None:
                    task.failed.add(key)
                else:
                    task.measured[key] = secs
                    if tile == task.tiles[0]:
                        task.default_s = secs
                task.trials += 1
                touched.add(task.name)
            if not pending:
                chosen[0][0].batches += 1
            done_trials += len(chosen)
            report(", ".join(sorted(touched)))
            if time.perf_counter() - last_merge >= MERGE_EVERY_S:
                improved += merge()
                last_merge = time.perf_counter()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        interrupt.__exit__(None, None, None)
        interrupted = interrupted or interrupt.requested
        try:
            improved += merge()
        finally:
            if measurer is not None:
                measurer.close()
            session.__exit__(None, None, None)
    picks = {}
    if note is None and interrupted:
        note = "interrupted"
    elif note is None:
        try:
            confirmed, picks = confirm_in_model(lowered, inputs, tasks, target, report=report)
        except KeyboardInterrupt:
            interrupted, note = True, "interrupted"
        else:
            if confirmed:
                store.merge(confirmed, target, replace=True)
    summaries = [TaskSummary(t.name, t.rule, t.weight, len(t.tiles), len(t.measured), t.trials,
                             None if t.default_s is None else 1e3 * t.default_s,
                             None if t.best is None else 1e3 * t.best[1], None if t.best is None else t.best[0],
                             picks[t.name][0] if t.name in picks else None,
                             1e3 * picks[t.name][1] if t.name in picks else None, tile_key(t.tiles[0]))
                 for t in sorted(tasks, key=lambda t: -(t.weight * (t.default_s or 0)))]
    return TuneResult(json.dumps(spec.to_json()), store.path, summaries, skipped, done_trials,
                      time.perf_counter() - start, interrupted, improved, len(picks), note)


def parse_budget(text: str) -> float:
    """``20m``, ``1h``, ``90s`` or plain seconds -> seconds."""
    value = str(text).strip().lower()
    units = {"s": 1, "m": 60, "h": 3600}
    scale = units.get(value[-1:], None)
    number = value[:-1] if scale else value
    try:
        seconds = float(number) * (scale or 1)
    except ValueError:
        raise OptionError(f"--budget {text!r}: give a duration such as 90s, 20m or 1h") from None
    if seconds <= 0:
        raise OptionError(f"--budget {text!r} must be positive")
    return seconds


__all__ = ["RPCSettings", "TuneResult", "TuneTask", "extract_tasks", "parse_budget", "parse_tracker", "tune_model",
           "LeptonError"]
