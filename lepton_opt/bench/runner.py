"""``lepton_opt.benchmark``: latency, throughput, memory and accuracy of every variant of a model.

What one benchmark does, per batch size:

1. builds each variant once (onnxruntime session, optimized ``.onnx``, or a lepton-opt build),
   recording build time and artifact size;
2. at the first batch size only, runs every variant on the accuracy inputs (a user dataset or
   seeded inputs) and compares its outputs with onnxruntime fp32 (the ``ort`` variant);
3. warms every variant up, then times them interleaved -- rounds in which each variant runs a
   short block of runs in a row (the first untimed), in an order shuffled every round -- so that
   load from other processes and clock changes hit all alike; speed-ups against onnxruntime are
   paired by round within that one interleaved run;
4. times onnxruntime once more on its own with its default thread spinning (interleaved
   sessions run without spinning: busy-waiting workers would take the cores from the next
   variant), reported for reference;
5. at the first batch size, measures each variant's peak resident memory in a process of its own
   (:mod:`lepton_opt.bench.memory`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import importlib.metadata
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from lepton_opt.evaluation.accuracy import AccuracyStats, OutputAccuracy, accuracy_stats, classifier_output, ort_session, random_feeds
from lepton_opt.evaluation.data import accuracy_inputs, feed_specs, input_specs, resolve_batches, shapes_at, stack_outputs
from lepton_opt.evaluation.latency import LatencyStats, time_interleaved
from lepton_opt.bench.memory import MemoryStats
from lepton_opt.bench.variants import BASELINE, BuiltVariant, PruneOptions, VariantSpec, build_variant, resolve_variants
from lepton_opt.errors import InputError, LeptonError, OptionError, TargetError
from lepton_opt.ir.load import InputShapes, ModelSource, load_model

MIN_ROUNDS = 10
MAX_ROUNDS = 5000
# Runs of one variant in a row per round: enough to fill BLOCK_S, within [MIN_BLOCK, MAX_BLOCK].
# The first run of each block is not timed: switching engines leaves caches and thread pools
# cold, and that one run would measure the switch, not the variant (measured: MobileNetV2 run
# alternately with onnxruntime took 1.6x its time alone).
BLOCK_S = 0.1
MIN_BLOCK, MAX_BLOCK = 3, 100
DEFAULT_DURATION_S = 10.0
DEFAULT_SAMPLES = 8


@dataclasses.dataclass
class VariantResult:
    name: str
    description: str
    engine: str
    status: str = "ok"  # "ok", "unavailable" or "failed"
    reason: str | None = None
    build_s: dict[int, float] = dataclasses.field(default_factory=dict)
    artifact_bytes: int | None = None
    latency: dict[int, LatencyStats] = dataclasses.field(default_factory=dict)
    accuracy: AccuracyStats | None = None
    memory: MemoryStats | None = None
    kernels: list[dict] | None = None  # lepton-opt builds: the slowest kernels (targets.profiling rows)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict:
        return {
            "name": self.name, "description": self.description, "engine": self.engine,
            "status": self.status, "reason": self.reason,
            "build_s": {str(b): s for b, s in self.build_s.items()},
            "artifact_bytes": self.artifact_bytes,
            "latency": {str(b): {**s.summary(), "times_ms": s.times_ms} for b, s in self.latency.items()},
            "accuracy": None if self.accuracy is None else {
                **dataclasses.asdict(self.accuracy), "max_abs": self.accuracy.max_abs,
                "max_rel": self.accuracy.max_rel, "cosine": self.accuracy.cosine},
            "memory": None if self.memory is None else dataclasses.asdict(self.memory),
            "kernels": self.kernels,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VariantResult:
        acc = data.get("accuracy")
        if acc is not None:
            fields = {f.name for f in dataclasses.fields(AccuracyStats)}
            acc = AccuracyStats(**{k: v for k, v in acc.items() if k in fields})
            acc.outputs = [OutputAccuracy(**o) for o in acc.outputs]
        return cls(
            data["name"], data["description"], data["engine"], data["status"], data.get("reason"),
            {int(b): t for b, t in data.get("build_s", {}).items()}, data.get("artifact_bytes"),
            {int(b): LatencyStats(int(b), s["times_ms"]) for b, s in data.get("latency", {}).items()},
            acc, None if data.get("memory") is None else MemoryStats(**data["memory"]), data.get("kernels"))


@dataclasses.dataclass
class BenchmarkResult:
    """Everything one benchmark measured; :meth:`to_dict` is the JSON report."""

    model: str
    sha256: str
    target: str
    threads: int
    batches: list[int]
    input_shapes: dict[str, list[int]]
    accuracy_inputs: str
    rounds: dict[int, int]
    variants: list[VariantResult]
    machine: dict[str, Any]
    date: str
    block: dict[int, int] = dataclasses.field(default_factory=dict)
    ort_spinning_alone: dict[int, LatencyStats] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)

    def variant(self, name: str) -> VariantResult:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(name)

    @property
    def name(self) -> str:
        return Path(self.model).stem

    def speedup(self, name: str, batch: int | None = None, baseline: str = BASELINE) -> float | None:
        """How many times faster than ``baseline`` (onnxruntime) the variant ran (above 1: faster).

        Paired by round: in every interleaved round, the baseline's median over the variant's
        median in that same round; the figure is the median of those ratios. A slow spell of
        the machine then slows both sides of a ratio alike instead of shifting one median."""
        batch = self.batches[0] if batch is None else batch
        try:
            base, v = self.variant(baseline).latency.get(batch), self.variant(name).latency.get(batch)
        except KeyError:
            return None
        if base is None or v is None:
            return None
        per_round = max(self.block.get(batch, 2) - 1, 1)
        ours, theirs = _round_medians(v.times_ms, per_round), _round_medians(base.times_ms, per_round)
        if len(ours) != len(theirs) or not ours:
            return base.p50 / v.p50
        return float(np.median(np.asarray(theirs) / np.asarray(ours)))

    @property
    def failed(self) -> list[VariantResult]:
        return [v for v in self.variants if v.status == "failed"]

    def to_dict(self) -> dict:
        return {
            "model": self.model, "sha256": self.sha256, "target": self.target, "threads": self.threads,
            "batches": self.batches, "input_shapes": self.input_shapes, "accuracy_inputs": self.accuracy_inputs,
            "rounds": {str(b): r for b, r in self.rounds.items()},
            "block": {str(b): r for b, r in self.block.items()}, "machine": self.machine, "date": self.date,
            "baseline": BASELINE,
            "speedup_vs_ort": {v.name: {str(b): self.speedup(v.name, b) for b in self.batches}
                               for v in self.variants if v.ok},
            "ort_spinning_alone": {str(b): {**s.summary(), "times_ms": s.times_ms}
                                   for b, s in self.ort_spinning_alone.items()},
            "variants": [v.to_dict() for v in self.variants],
            "notes": self.notes,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BenchmarkResult:
        """A result back from its JSON report (to re-render reports without measuring again)."""
        def by_batch(mapping):
            return {int(b): v for b, v in mapping.items()}

        return cls(
            data["model"], data["sha256"], data["target"], data["threads"], list(data["batches"]),
            dict(data["input_shapes"]), data["accuracy_inputs"], by_batch(data["rounds"]),
            [VariantResult.from_dict(v) for v in data["variants"]], dict(data["machine"]), data["date"],
            by_batch(data.get("block", {})),
            {int(b): LatencyStats(int(b), s["times_ms"]) for b, s in data.get("ort_spinning_alone", {}).items()},
            list(data.get("notes", [])))


def _round_medians(times: list[float], per_round: int) -> list[float]:
    return [float(np.median(times[i:i + per_round])) for i in range(0, len(times), per_round)]


def benchmark(
    model: ModelSource,
    target: str = "llvm",
    *,
    variants: str | Sequence[str] | None = None,
    input_shapes: InputShapes | None = None,
    threads: int | None = None,
    batches: Sequence[int] | None = None,
    data: str | os.PathLike | Mapping[str, np.ndarray] | None = None,
    labels: str | os.PathLike | np.ndarray | None = None,
    samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
    rounds: int | None = None,
    block: int | None = None,
    duration: float = DEFAULT_DURATION_S,
    warmup: int = 5,
    memory: bool = True,
    kernels: bool = True,
    prune: PruneOptions | None = None,
    calibration: str | os.PathLike | Mapping[str, np.ndarray] | None = None,
    progress: bool = False,
    report_dir: str | os.PathLike | None = None,
) -> BenchmarkResult:
    """Benchmark ``variants`` of ``model`` against onnxruntime; see the module docstring.

    ``batches`` sweeps the batch size (the first dim of every input, which must be dynamic
    unless it already equals the batch). Accuracy uses ``data`` (an ``.npz`` path or a dict,
    input name -> samples stacked on axis 0, fed in batches of the first batch size) with
    optional ``labels`` (one class per sample), else ``samples`` seeded inputs. ``rounds``
    fixes the number of interleaved rounds and ``block`` the runs per variant in each (the
    first untimed); else blocks last about 0.1 s and rounds fill about ``duration`` seconds per
    batch size (at least 10 rounds). ``prune`` says how the ``pruned``/``ort-pruned`` variants prune
    (default: channel pruning, 30%). ``calibration`` (same form as ``data``) calibrates the int8
    variants; without it they calibrate on seeded inputs (noted in the report). ``report_dir`` also
    writes Markdown, HTML and JSON reports there.
    """
    specs = resolve_variants(list(variants) if variants is not None and not isinstance(variants, str)
                             else variants)
    if samples < 1:
        raise OptionError(f"samples must be at least 1, got {samples}")
    if rounds is not None and rounds < 1:
        raise OptionError(f"rounds must be at least 1, got {rounds}")
    if block is not None and block < 2:
        raise OptionError(f"block must be at least 2 (its first run is not timed), got {block}")
    threads = _resolve_threads(threads)
    os.environ["TVM_NUM_THREADS"] = str(threads)  # read by TVM's thread pool when it starts
    kind = _check_target(target, specs)
    loaded = load_model(model)
    source_name = loaded.source
    model_bytes = ir.serde.serialize_model(loaded.model).SerializeToString()
    inputs = input_specs(loaded.model, input_shapes, source_name)
    output_names = [v.name for v in loaded.model.graph.outputs]
    batch_list = resolve_batches(inputs, batches, source_name)
    first = batch_list[0]
    evaluation = accuracy_inputs(inputs, first, data, labels, samples, seed, source_name)

    result = BenchmarkResult(
        model=source_name, sha256=hashlib.sha256(model_bytes).hexdigest(), target=kind, threads=threads,
        batches=batch_list, input_shapes=shapes_at(inputs, first), accuracy_inputs=evaluation.description,
        rounds={}, variants=[VariantResult(s.name, s.description, s.engine) for s in specs],
        machine=machine_info(threads), date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    for spec, vr in zip(specs, result.variants):
        if spec.unavailable:
            vr.status, vr.reason = "unavailable", spec.unavailable
    if any(s.pruned for s in specs):
        result.notes.append(f"pruned variants: {(prune or PruneOptions()).describe()}")
    if any(s.precision == "int8" for s in specs):
        from lepton_opt.passes.quantize import DEFAULT_CALIBRATION_SAMPLES

        result.notes.append("int8 variants: calibrated on " + (
            Path(calibration).name if isinstance(calibration, (str, os.PathLike)) else "the given calibration arrays"
            if calibration is not None else f"{DEFAULT_CALIBRATION_SAMPLES} seeded random inputs (no calibration data given)"))
    workdir = Path(tempfile.mkdtemp(prefix="lepton-bench-"))
    try:
        with _progress(progress) as bar:
            for batch in batch_list:
                shapes = shapes_at(inputs, batch)
                built = _build_all(specs, result, model, model_bytes, shapes, kind, threads, workdir,
                                   batch, output_names, prune, calibration, bar)
                if BASELINE not in built:
                    raise InputError(f"{source_name}: onnxruntime could not run the model: "
                                     f"{result.variant(BASELINE).reason}")
                if batch == first:
                    _measure_accuracy(built, result, evaluation, first, bar)
                    if any(b.spec.engine == "lepton-opt" for b in built.values()):
                        note = _tvm_threads_note(threads)
                        if note:
                            result.notes.append(note)
                feeds = evaluation.feeds[0] if batch == first else random_feeds(feed_specs(inputs, batch), seed)
                _measure_latency(built, result, feeds, batch, rounds, block, duration, warmup, bar)
                _measure_spinning_baseline(result, model_bytes, feeds, batch, threads, warmup, output_names, bar)
                if batch == first and memory:
                    _measure_memory(built, result, feeds, threads, workdir, bar)
                if batch == first and kernels:
                    _measure_kernels(built, result, feeds, bar)
                for b in built.values():
                    if b.target is not None and "mcpu" in b.target:
                        result.machine.setdefault("llvm_mcpu", b.target["mcpu"])
                built.clear()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if report_dir is not None:
        from lepton_opt.bench.report import write_reports

        write_reports([result], report_dir)
    return result


# ------------------------------------------------------------------------------------------
# Inputs, shapes and options


def _resolve_threads(threads: int | None) -> int:
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if threads is None:
        return available
    if threads < 1:
        raise OptionError(f"threads must be at least 1, got {threads}")
    return threads


def _tvm_threads_note(threads: int) -> str | None:
    """None if lepton-opt builds run with ``threads`` threads, else a note saying what they ran with.

    TVM's pool reads TVM_NUM_THREADS when it first runs work, which :func:`benchmark` sets first
    thing; a pool started earlier in the process keeps its size."""
    from lepton_opt.targets.artifact import runtime_threads

    actual = runtime_threads()
    if actual != threads:
        return (f"lepton-opt builds ran with {actual} threads, not {threads}: TVM's thread pool had started "
                "before the benchmark (set TVM_NUM_THREADS before running anything compiled in this process)")
    return None


def _check_target(target: str, specs: list[VariantSpec]) -> str:
    from lepton_opt.targets.build import resolve_target

    kind = resolve_target(target).kind
    if kind == "cuda" and any(s.engine == "lepton-opt" and not s.unavailable for s in specs):
        from lepton_opt.targets.artifact import cuda_available

        if not cuda_available():
            raise TargetError("bench runs the model, and --target cuda needs a CUDA GPU: none is visible here; "
                              "benchmark --target llvm, or run on a machine with a GPU")
    return kind


# ------------------------------------------------------------------------------------------
# Measurements


def _build_all(specs, result, source, model_bytes, shapes, kind, threads, workdir, batch, output_names, prune,
               calibration, bar):
    built: dict[str, BuiltVariant] = {}
    pruned_cache: dict = {}  # pruned and ort-pruned share one pruned model
    quantized_cache: dict = {}  # int8 and ort-int8 share one quantized model
    todo = [s for s in specs if not s.unavailable and result.variant(s.name).status != "failed"]
    task = bar.add(f"building variants (batch {batch})", len(todo))
    for spec in todo:
        vr = result.variant(spec.name)
        bar.update(task, f"building {spec.name} (batch {batch})")
        try:
            b = build_variant(spec, source, model_bytes, shapes=shapes, target=kind, threads=threads,
                              workdir=workdir, tag=f"b{batch}", output_names=output_names, prune=prune,
                              pruned_cache=pruned_cache, calibration=calibration,
                              quantized_cache=quantized_cache)
        except LeptonError as e:
            vr.status, vr.reason = "failed", str(e)
        except Exception as e:  # an engine's own failure (onnxruntime, TVM): report it, measure the rest
            first_line = (str(e).strip().splitlines() or [""])[0]
            vr.status, vr.reason = "failed", f"{type(e).__name__}: {first_line}"
        else:
            built[spec.name] = b
            vr.build_s[batch] = b.build_s
            if batch == result.batches[0]:
                vr.artifact_bytes = b.artifact_bytes
        bar.advance(task)
    bar.done(task)
    return built


def _measure_accuracy(built, result, evaluation, batch, bar):
    feeds, valid, labels = evaluation.feeds, evaluation.valid, evaluation.labels
    task = bar.add("accuracy", len(built) * len(feeds))
    outputs: dict[str, dict[str, np.ndarray]] = {}
    for name, b in list(built.items()):
        bar.update(task, f"accuracy: {name}")
        runs = []
        try:
            for feed in feeds:
                runs.append(b.run(feed))
                bar.advance(task)
        except Exception as e:
            vr = result.variant(name)
            vr.status, vr.reason = "failed", f"run failed: {(str(e).strip().splitlines() or [type(e).__name__])[0]}"
            del built[name]
            continue
        outputs[name] = stack_outputs(runs, valid, batch)
    bar.done(task)
    reference = outputs.get(BASELINE)
    if reference is None:
        return
    n = sum(valid)
    if labels is not None and classifier_output(reference) is None:
        raise InputError("labels were given but the model has no classifier output ([batch, classes] scores)")
    for name, got in outputs.items():
        result.variant(name).accuracy = accuracy_stats(reference, got, n, labels)


def _measure_latency(built, result, feeds, batch, rounds, block, duration, warmup, bar):
    names = list(built)
    calls = [built[n].timed(feeds) for n in names]
    task = bar.add(f"warming up (batch {batch})", 1)
    warm = time_interleaved(calls, max(warmup, 1))
    bar.done(task)
    run_s = [float(np.median(t)) / 1e3 for t in warm]
    if block is None:
        block = int(min(MAX_BLOCK, max(MIN_BLOCK, np.ceil(BLOCK_S / max(max(run_s), 1e-6)))))
    if rounds is None:
        rounds = int(min(MAX_ROUNDS, max(MIN_ROUNDS, duration / max(block * sum(run_s), 1e-6))))
    result.rounds[batch], result.block[batch] = rounds, block
    task = bar.add(f"timing {len(names)} variants interleaved (batch {batch})", rounds)
    timed = _time_with_progress(calls, rounds, block, bar, task)
    bar.done(task)
    for name, times in zip(names, timed):
        result.variant(name).latency[batch] = LatencyStats(batch, times)


def _time_with_progress(calls, rounds, block, bar, task, chunk: int = 5) -> list[list[float]]:
    times: list[list[float]] = [[] for _ in calls]
    done = 0
    while done < rounds:
        step = min(chunk, rounds - done)
        for acc, new in zip(times, time_interleaved(calls, step, shuffle_seed=done, block=block, discard=1)):
            acc.extend(new)
        done += step
        bar.advance(task, step)
    return times


def _measure_spinning_baseline(result, model_bytes, feeds, batch, threads, warmup, output_names, bar):
    task = bar.add(f"timing onnxruntime alone with spinning (batch {batch})", 1)
    session = ort_session(model_bytes, threads=threads, optimize=True, spinning=True)
    feeds = dict(feeds)
    runs = min(result.rounds[batch] * (result.block[batch] - 1), 500)
    (times,) = time_interleaved([lambda: session.run(output_names, feeds)], runs, warmup=max(warmup, 1))
    result.ort_spinning_alone[batch] = LatencyStats(batch, times)
    bar.done(task)


KERNEL_ROWS = 10  # kernels kept per lepton-opt variant for the report


def _measure_kernels(built, result, feeds, bar):
    """The per-kernel profile of every lepton-opt CPU build (the report's "where the time goes")."""
    from lepton_opt.targets.profiling import profile

    compiled = {name: b.compiled for name, b in built.items() if b.compiled is not None
                and b.compiled.target.get("kind") == "llvm"}
    task = bar.add("kernel profiles", len(compiled))
    for name, model in compiled.items():
        bar.update(task, f"kernel profile: {name}")
        try:
            rows = profile(model, feeds, runs=5).rows
        except LeptonError as e:
            result.notes.append(f"{name}: no kernel profile ({e})")
        else:
            result.variant(name).kernels = [r.to_json() for r in rows[:KERNEL_ROWS]]
        bar.advance(task)
    bar.done(task)


def _measure_memory(built, result, feeds, threads, workdir, bar):
    from lepton_opt.bench.memory import measure

    feeds_path = workdir / "memory-feeds.npz"
    np.savez(feeds_path, **feeds)
    task = bar.add("peak memory (one process per variant)", len(built))
    for name, b in built.items():
        bar.update(task, f"peak memory: {name}")
        kind, path = b.probe
        try:
            result.variant(name).memory = measure(kind, path, feeds_path, threads)
        except Exception as e:
            result.notes.append(f"peak memory of {name} not measured: {e}")
        bar.advance(task)
    bar.done(task)


# ------------------------------------------------------------------------------------------
# Machine facts and progress


def machine_info(threads: int) -> dict[str, Any]:
    def version(pkg: str) -> str | None:
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "cpu": cpu_name(),
        "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "threads": threads,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {p: version(p) for p in ("lepton-opt", "onnxruntime", "apache-tvm", "onnx", "numpy")},
    }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


class _NoProgress:
    def add(self, description: str, total: int) -> int:
        return 0

    def update(self, task: int, description: str) -> None:
        pass

    def advance(self, task: int, steps: int = 1) -> None:
        pass

    def done(self, task: int) -> None:
        pass


class _RichProgress(_NoProgress):
    def __init__(self, progress):
        self._progress = progress

    def add(self, description: str, total: int) -> int:
        return self._progress.add_task(description, total=max(total, 1))

    def update(self, task: int, description: str) -> None:
        self._progress.update(task, description=description)

    def advance(self, task: int, steps: int = 1) -> None:
        self._progress.advance(task, steps)

    def done(self, task: int) -> None:
        self._progress.remove_task(task)


@contextlib.contextmanager
def _progress(enabled: bool) -> Iterator[_NoProgress]:
    if not enabled:
        yield _NoProgress()
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        yield _RichProgress(progress)
