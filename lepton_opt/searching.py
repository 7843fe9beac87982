"""``lepton_opt.auto``: the fastest build of a model that stays within an accuracy budget.

A deployment engineer's question is "the fastest thing that is still accurate enough". ``auto``
tries the builds lepton-opt can make of the model -- fp32, fp32 with tuned kernels, fp16/bf16
mixed precision with the accuracy guard, int8 (static with three calibration methods, dynamic,
weight-only), channel-pruned at the sparsity the sensitivity scan allows, pruned + int8, and the
best static int8 with tuned integer kernels -- and keeps the fastest one that meets the budget, with the evidence:

1. **Splits** ``data`` into a calibration half (what int8 calibrates on, what the guards and the
   pruning scan score on) and a held-out half that only judges the candidates (or takes
   ``eval_data``). Without data both are seeded inputs, and agreement with fp32 is all it can
   judge (``max_accuracy_drop`` needs labels).
2. **Skips** what cannot help on this model or target and says why (no MatMul/Gemm: no dynamic
   or weight-only int8; a CPU without native fp16/bf16 arithmetic: no fp16/bf16 build, they run
   converted to float32 there; no channel group to prune; too little time left to tune).
3. **Builds** each remaining candidate (cheap ones first), scores it on the held-out split against
   onnxruntime fp32 on the original model (cosine, error relative to the largest reference value,
   non-finite values, top-1 task accuracy with labels) and times it briefly.
4. **Measures** the candidates that meet the budget and are not clearly slower than the fastest
   (successive halving: only those within 1.5x of the fastest brief time go on) interleaved with
   onnxruntime and the fp32 build, in one run, and picks the fastest by median; fp32 when nothing
   else meets the budget. Past the time ``budget`` no new candidate starts; Ctrl-C keeps the best
   found so far.
5. **Writes** ``output_dir``: the chosen artifact (``model.lepton``, its manifest recording the
   recipe), the chosen ONNX model (``model.onnx``), the calibration split (``calibration.npz``,
   so the recipe replays exactly) and a report (``report.md``, ``report.html`` with the
   latency-accuracy plot and its Pareto front, ``report.json``) listing every candidate, and the
   command that rebuilds the chosen one.
"""

from __future__ import annotations

import dataclasses
import datetime
import html
import json
import math
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from lepton_opt.evaluation.accuracy import accuracy_stats, nonfinite_mismatch, ort_session
from lepton_opt.evaluation.data import Batches, accuracy_inputs, input_specs, load_data, load_labels, resolve_batches, shapes_at, stack_outputs
from lepton_opt.evaluation.latency import time_interleaved
from lepton_opt.errors import InputError, LeptonError, OptionError, first_line
from lepton_opt.ir.load import InputShapes, ModelSource, load_model
from lepton_opt.passes.budget import meets

SCHEMA_VERSION = 1
# Seeded inputs when no data is given: this many to calibrate, this many to judge.
SEEDED_SAMPLES = 16
# Candidates within this share of the fastest median count as equally fast (one interleaved run's
# noise here): the most accurate of them is chosen.
NEAR_TIE = 0.03
# Successive halving: a candidate whose brief time is more than this factor above the fastest
# passing candidate's is not measured further.
HALVING_FACTOR = 1.5
BRIEF_RUNS = 10
FINAL_DURATION_S = 8.0
# Tuning is tried only with at least this much of the time budget left, and takes half of it.
MIN_TUNE_S = 300.0
INT8_METHODS = ("minmax", "percentile", "entropy")


# ----------------------------------------------------------------------------------- budget
@dataclasses.dataclass(frozen=True)
class Budget:
    """One accuracy criterion, judged on the held-out split against onnxruntime fp32."""

    max_accuracy_drop: float | None = None  # top-1 accuracy points (needs labels)
    min_cosine: float | None = None  # smallest cosine similarity of any output
    max_error: float | None = None  # largest error relative to the largest reference value

    def __post_init__(self):
        given = [n for n in ("max_accuracy_drop", "min_cosine", "max_error") if getattr(self, n) is not None]
        if len(given) != 1:
            raise OptionError("give exactly one accuracy budget: --max-accuracy-drop P, --min-cosine C or "
                              f"--max-error E (got {', '.join(given) or 'none'})")
        if self.max_accuracy_drop is not None and not 0 <= self.max_accuracy_drop <= 100:
            raise OptionError(f"--max-accuracy-drop is in top-1 accuracy points, 0 to 100; got {self.max_accuracy_drop}")
        if self.min_cosine is not None and not -1 < self.min_cosine <= 1:
            raise OptionError(f"--min-cosine must be in (-1, 1]; got {self.min_cosine}")
        if self.max_error is not None and not self.max_error >= 0:
            raise OptionError(f"--max-error must be at least 0; got {self.max_error}")

    @property
    def metric(self) -> str:
        return ("accuracy_drop" if self.max_accuracy_drop is not None else
                "cosine" if self.min_cosine is not None else "max_error")

    def describe(self) -> str:
        if self.max_accuracy_drop is not None:
            return f"top-1 accuracy at most {self.max_accuracy_drop:g} points below fp32"
        if self.min_cosine is not None:
            return f"cosine similarity to fp32 at least {self.min_cosine:g} on every output"
        return f"error at most {self.max_error:g} of the largest fp32 output value"

    @property
    def value(self) -> float:
        return next(v for v in (self.max_accuracy_drop, self.min_cosine, self.max_error) if v is not None)

    def meets(self, score: float) -> bool:
        # (accuracy points are counted in steps of 100/n: a drop equal to the budget meets it)
        return meets(self.metric, self.value + (1e-9 if self.metric == "accuracy_drop" else 0.0), score)

    def guard_options(self, kind: str, labels) -> dict:
        """The options that make a conversion's own guard aim at this budget (the held-out
        split judges the result in the end)."""
        if kind in ("fp16", "bf16"):
            if self.min_cosine is not None:
                return {"min_cosine": self.min_cosine}
            return {"max_error": self.max_error} if self.max_error is not None else {}
        if kind == "int8":
            if self.min_cosine is not None:
                return {"min_cosine": self.min_cosine}
            if self.max_accuracy_drop is not None:
                return {"max_accuracy_drop": self.max_accuracy_drop, "labels": labels}
            return {}
        if kind == "prune":
            if self.max_accuracy_drop is not None:
                return {"max_accuracy_drop": self.max_accuracy_drop, "labels": labels}
            if self.max_error is not None:
                return {"max_error": self.max_error}
            return {"max_error": math.sqrt(max(0.0, 2 * (1 - self.min_cosine)))}  # |a-b| for unit vectors
        raise ValueError(kind)


# ---------------------------------------------------------------------------------- recipes
@dataclasses.dataclass
class Candidate:
    """One recipe and what came of it."""

    name: str
    description: str
    status: str = "pending"  # "skipped", "failed", "rejected" (over budget), "slow" (halved), "measured"
    reason: str = ""
    build_s: float | None = None
    score: float | None = None  # the budget's metric on the held-out split
    cosine: float | None = None
    max_error: float | None = None
    nonfinite: int | None = None
    task_accuracy: float | None = None  # top-1 points, with labels
    brief_ms: float | None = None
    median_ms: float | None = None
    vs_onnxruntime: float | None = None  # latency ratio (below 1: faster)
    vs_fp32: float | None = None
    replay: str = ""
    chosen: bool = False
    pareto: bool = False
    recipe: dict = dataclasses.field(default_factory=dict)

    @property
    def meets(self) -> bool:
        return self.status in ("slow", "measured")

    def to_json(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items()}


@dataclasses.dataclass
class AutoResult:
    model: str
    budget: Budget
    candidates: list[Candidate]
    chosen: Candidate
    why: str
    output_dir: Path | None
    seconds: float
    threads: int
    batch: int
    data: str
    onnxruntime_ms: float | None
    reference_accuracy: float | None
    interrupted: bool = False
    notes: list[str] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, "model": self.model, "budget": self.budget.describe(),
                "metric": self.budget.metric, "chosen": self.chosen.name, "why": self.why,
                "replay": self.chosen.replay, "output_dir": str(self.output_dir) if self.output_dir else None,
                "seconds": self.seconds, "threads": self.threads, "batch": self.batch, "data": self.data,
                "onnxruntime_ms": self.onnxruntime_ms, "reference_accuracy": self.reference_accuracy,
                "interrupted": self.interrupted, "notes": self.notes,
                "candidates": [c.to_json() for c in self.candidates]}


def _recipes(ops: set[str], target_features: set[str]) -> list[tuple[Candidate, str | None]]:
    """Every candidate, cheap first, each with the reason it is skipped (None: tried)."""
    matmuls = bool(ops & {"MatMul", "Gemm"})
    weighted = bool(ops & {"MatMul", "Gemm", "Conv"})
    prunable = bool(ops & {"Conv", "Gemm", "MatMul"})
    fp16_native = bool(target_features & {"avx512fp16"})
    bf16_native = bool(target_features & {"avx512bf16", "amx-bf16"})
    no_int8 = None if weighted else "no Conv, MatMul or Gemm: nothing for int8 kernels to take"
    found = [
        (Candidate("fp32", "fp32, -O2 graph passes (the reference build)"), None),
        (Candidate("int8-dynamic", "int8 dynamic quantization of MatMul/Gemm weights (activations quantized per run)"),
         None if matmuls else "no MatMul or Gemm: dynamic int8 quantizes nothing else"),
        (Candidate("int8-weight-only", "int8 weights read through DequantizeLinear, float compute"),
         None if matmuls else "no MatMul or Gemm: weight-only int8 quantizes nothing else"),
        *[(Candidate(f"int8-{m}", f"int8 static QDQ, per-channel weights, {m} calibration, guard to the budget"),
           no_int8) for m in INT8_METHODS],
        (Candidate("fp16", "fp16 mixed precision, guard to the budget"),
         None if fp16_native else "this CPU has no native fp16 arithmetic (avx512fp16): fp16 kernels run converted "
                                  "to float32 and are slower than fp32"),
        (Candidate("bf16", "bf16 mixed precision, guard to the budget"),
         None if bf16_native else "this CPU has no native bf16 arithmetic (avx512bf16/amx-bf16): bf16 kernels run "
                                  "converted to float32 and are slower than fp32"),
        (Candidate("pruned", "channel pruning at the sparsity the sensitivity scan allows within the budget"),
         None if prunable else "no Conv, Gemm or MatMul to prune"),
        (Candidate("pruned+int8", "the pruned model, then int8 static QDQ with the best calibration found"),
         None if prunable and weighted else "no Conv, Gemm or MatMul to prune"),
        (Candidate("fp32-tuned", "fp32 with kernels tuned (records in the user cache)"), None),
        (Candidate("int8-tuned", "the best static int8 build with its integer kernels tuned"), no_int8),
    ]
    return found


# ------------------------------------------------------------------------------------ split
@dataclasses.dataclass
class _Split:
    calibration: dict[str, np.ndarray] | None  # samples on axis 0; None: the passes' seeded inputs
    calibration_labels: np.ndarray | None
    evaluation: Batches
    description: str


def split_data(inputs, batch: int, data, labels, eval_data, eval_labels, seed: int, source: str) -> _Split:
    """Calibration and held-out inputs: ``eval_data`` if given, else the second half of
    ``data`` (the first half calibrates), else seeded inputs of different seeds."""
    if data is None:
        if labels is not None:
            raise OptionError("labels need the inputs they belong to: give --data with --labels")
        evaluation = accuracy_inputs(inputs, batch, None, None, SEEDED_SAMPLES, seed + 1000, source)
        return _Split(None, None, evaluation, f"{SEEDED_SAMPLES} seeded inputs (no data given: output agreement only)")
    arrays, name = load_data(data, inputs)
    n = len(next(iter(arrays.values())))
    label_array = load_labels(labels, n) if labels is not None else None
    if eval_data is not None:
        evaluation = accuracy_inputs(inputs, batch, eval_data, eval_labels, 1, seed, source)
        return _Split(arrays, label_array, evaluation,
                      f"{name}: {n} samples calibrate; {evaluation.description} judges")
    if n < 2:
        raise InputError(f"{name}: holds {n} sample; auto needs at least 2 (half calibrates, half judges) "
                         "or --eval-data")
    half = n // 2
    calibration = {k: v[:half] for k, v in arrays.items()}
    held_out = {k: v[half:] for k, v in arrays.items()}
    evaluation = accuracy_inputs(inputs, batch, held_out, None if label_array is None else label_array[half:],
                                 1, seed, source)
    return _Split(calibration, None if label_array is None else label_array[:half], evaluation,
                  f"{name}: samples 0-{half - 1} calibrate, {half}-{n - 1} are held out to judge")


# ------------------------------------------------------------------------------------- auto
def auto(model: ModelSource, *, data=None, labels=None, eval_data=None, eval_labels=None,
         max_accuracy_drop: float | None = None, min_cosine: float | None = None, max_error: float | None = None,
         budget: float | str = "30m", target: str = "llvm", threads: int | None = None,
         input_shapes: InputShapes | None = None, output_dir: str | os.PathLike | None = None, seed: int = 0,
         progress: Callable[[str], None] | None = None) -> AutoResult:
    """Find the fastest build of ``model`` within the accuracy budget (see the module docstring).

    Give exactly one of ``max_accuracy_drop`` (top-1 points; needs ``labels``), ``min_cosine``
    or ``max_error``. ``budget``: seconds or a duration ("30m") for the whole search.
    ``output_dir`` receives the chosen artifact, ONNX model, calibration split and report."""
    import lepton_opt
    from lepton_opt.bench.runner import _resolve_threads
    from lepton_opt.targets.build import resolve_target
    from lepton_opt.targets.tune import parse_budget

    started = time.perf_counter()
    note = progress or (lambda _msg: None)
    criterion = Budget(max_accuracy_drop, min_cosine, max_error)
    if max_accuracy_drop is not None and labels is None and eval_labels is None:
        raise OptionError("--max-accuracy-drop needs labelled data: give --data and --labels")
    deadline = started + parse_budget(budget)
    spec = resolve_target(target)
    if spec.kind != "llvm":
        raise OptionError("auto measures every candidate, so it runs on this machine's CPU: use --target llvm "
                          "(compile the chosen recipe for CUDA afterwards)")
    threads = _resolve_threads(threads)
    os.environ["TVM_NUM_THREADS"] = str(threads)
    loaded = load_model(model, input_shapes)
    source = loaded.source
    proto = onnx.ModelProto.FromString(_serialize(loaded.model))
    inputs = input_specs(loaded.model, input_shapes, source)
    batch = resolve_batches(inputs, None, source)[0]
    shapes = shapes_at(inputs, batch)
    split = split_data(inputs, batch, data, labels, eval_data, eval_labels, seed, source)
    evaluation = split.evaluation
    n = sum(evaluation.valid)
    note(f"reference: onnxruntime fp32 on {n} held-out samples")
    reference_session = ort_session(proto.SerializeToString(), threads=threads)
    output_names = [o.name for o in reference_session.get_outputs()]
    reference = stack_outputs([dict(zip(output_names, reference_session.run(output_names, f)))
                               for f in evaluation.feeds], evaluation.valid, batch)
    reference_accuracy = None
    if evaluation.labels is not None:
        reference_accuracy = accuracy_stats(reference, reference, n, evaluation.labels).task_accuracy
        if reference_accuracy is None:
            raise InputError(f"{source}: labels were given but the model has no classifier output "
                             "([batch, classes] scores)")
        reference_accuracy *= 100
    ops = {node.op_type for node in proto.graph.node}
    calibration = split.calibration
    common = {"input_shapes": shapes}
    built: dict[str, Any] = {}  # candidate name -> compiled model
    models: dict[str, onnx.ModelProto] = {}  # candidate name -> the ONNX model it was built from
    candidates: list[Candidate] = []
    interrupted = False
    notes = [f"built for batch {batch} (input shapes {shapes})"]
    workdir = Path(tempfile.mkdtemp(prefix="lepton-auto-"))
    pruned_model: dict[str, onnx.ModelProto] = {}
    best_int8 = {"method": "minmax", "score": None}

    def build(candidate: Candidate):
        """The candidate's build, the ONNX model it was built from, and its recipe: what
        :func:`_replay` turns into commands (``guard``: the conversion's own accuracy guard,
        ``prune``: the pruning step's options, ``calibrated``: it read the calibration split)."""
        name = candidate.name
        kind = "int8" if name.startswith(("int8", "pruned+")) else name if name in ("fp16", "bf16") else "prune"
        guard = criterion.guard_options(kind, split.calibration_labels)
        cal = {"data": calibration} if calibration is not None else {}
        recipe = {"precision": None, "guard": _plain_guard(guard), "calibrated": bool(cal)}
        if name == "fp32":
            return lepton_opt.compile(proto, **common), proto, {"precision": None}
        if name == "fp32-tuned":
            left = deadline - time.perf_counter()
            lepton_opt.tune(proto, input_shapes=shapes, budget=max(60.0, left / 2))
            return lepton_opt.compile(proto, **common), proto, {"precision": None, "tuned": True}
        if name in ("int8-dynamic", "int8-weight-only"):
            mode = name.split("-", 1)[1]
            compiled = lepton_opt.compile(proto, precision="int8", mode=mode, **common)
            return compiled, compiled.precision.model, {"precision": "int8", "mode": mode}
        if name == "int8-tuned":
            if best_int8["score"] is None:
                raise _Skip("no static int8 build met the budget")
            method = best_int8["method"]
            int8 = {"precision": "int8", "method": method, **cal, **guard}
            left = deadline - time.perf_counter()
            lepton_opt.tune(proto, input_shapes=shapes, budget=max(60.0, left / 2), **int8)
            compiled = lepton_opt.compile(proto, **int8, **common)
            return compiled, compiled.precision.model, {**recipe, "precision": "int8", "mode": "static",
                                                        "method": method, "tuned": True}
        if name.startswith("int8-"):
            method = name.split("-", 1)[1]
            compiled = lepton_opt.compile(proto, precision="int8", method=method, **cal, **guard, **common)
            return compiled, compiled.precision.model, {**recipe, "precision": "int8", "mode": "static",
                                                        "method": method}
        if name in ("fp16", "bf16"):
            # the guard scores on the calibration data; without a guard for this metric, none is given
            cal = cal if guard else {}
            compiled = lepton_opt.compile(proto, precision=name, **cal, **guard, **common)
            return compiled, compiled.precision.model, {**recipe, "precision": name, "calibrated": bool(cal)}
        if name == "pruned":
            result = lepton_opt.prune(proto, "channel", input_shapes=shapes, **cal, **guard)
            if result.params_after >= result.params_before:
                raise _Skip("the sensitivity scan found no channel to remove within the budget")
            pruned_model.update(model=result.model, options=_plain_guard(guard))
            return lepton_opt.compile(result.model, **common), result.model, {
                "precision": None, "prune": pruned_model["options"], "calibrated": bool(cal)}
        if name == "pruned+int8":
            if "model" not in pruned_model:
                raise _Skip("the pruned candidate did not build")
            method = best_int8["method"]
            compiled = lepton_opt.compile(pruned_model["model"], precision="int8", method=method, **cal, **guard,
                                          **common)
            return compiled, compiled.precision.model, {**recipe, "precision": "int8", "mode": "static",
                                                        "method": method, "prune": pruned_model["options"]}
        raise ValueError(name)

    try:
        for candidate, skip in _recipes(ops, {f.lstrip("+") for f in spec.mattr}):
            candidates.append(candidate)
            if skip is None and candidate.name.endswith("-tuned") and deadline - time.perf_counter() < MIN_TUNE_S:
                skip = (f"less than {MIN_TUNE_S / 60:.0f} minutes of the time budget left for tuning "
                        "(give a larger --budget)")
            if skip is None and candidate.name != "fp32" and time.perf_counter() > deadline:
                skip = "the time budget ran out before it was tried"
            if skip is not None:
                candidate.status, candidate.reason = "skipped", skip
                continue
            note(f"building {candidate.name}")
            start = time.perf_counter()
            try:
                compiled, built_from, recipe = build(candidate)
            except _Skip as e:
                candidate.status, candidate.reason = "skipped", str(e)
                continue
            except LeptonError as e:
                if candidate.name == "fp32":
                    raise
                candidate.status, candidate.reason = "failed", first_line(e)
                continue
            candidate.build_s = time.perf_counter() - start
            candidate.recipe = recipe
            # saved before it runs: TVM warns for every constant when it exports an executable that ran
            compiled.manifest["auto"] = {"candidate": candidate.name, "recipe": recipe,
                                         "budget": criterion.describe()}
            compiled.save(workdir / candidate.name)
            _score(candidate, compiled, evaluation, reference, reference_accuracy, criterion, batch, n)
            converted = _converted_nodes(compiled)
            if converted == 0:  # the guard kept everything in float: fp32 under another name
                candidate.status = "rejected"
                candidate.reason = "the guard kept every node in float32 to meet the budget: the same build as fp32"
            elif not criterion.meets(candidate.score) or candidate.nonfinite:
                candidate.status = "rejected"
                candidate.reason = (f"{candidate.nonfinite} non-finite values where fp32 is finite"
                                    if candidate.nonfinite else f"{criterion.metric} {candidate.score:.6g} misses the budget")
            else:
                candidate.status = "slow"  # until measured
            if candidate.name.startswith("int8-") and candidate.status == "slow" and candidate.name[5:] in INT8_METHODS:
                if best_int8["score"] is None or _better(criterion, candidate.score, best_int8["score"]):
                    best_int8.update(method=candidate.name[5:], score=candidate.score)
            candidate.brief_ms = _brief_ms(compiled, evaluation.feeds[0])
            built[candidate.name], models[candidate.name] = compiled, built_from
            note(f"{candidate.name}: {criterion.metric} {candidate.score:.6g}, ~{candidate.brief_ms:.3f} ms "
                 f"({'meets' if candidate.meets else 'misses'} the budget)")
    except KeyboardInterrupt:
        interrupted = True
        notes.append("interrupted: the search kept what it had measured")
        for candidate in candidates:
            if candidate.status == "pending":
                candidate.status, candidate.reason = "skipped", "interrupted"
    if "fp32" not in built:
        raise LeptonError(f"{source}: the fp32 build did not finish; nothing to choose from")

    # Successive halving: only candidates near the fastest brief time are measured interleaved.
    passing = [c for c in candidates if c.meets]
    fastest = min(c.brief_ms for c in passing) if passing else None
    for c in passing:
        if c.name != "fp32" and c.brief_ms > HALVING_FACTOR * fastest:
            c.reason = f"{c.brief_ms / fastest:.2f}x the fastest brief time: not measured further"
    finalists = [c for c in passing if c.name == "fp32" or not c.reason]
    note(f"timing {len(finalists)} candidates interleaved with onnxruntime")
    ort_ms = _final_timing(finalists, built, proto, evaluation.feeds[0], threads, output_names)
    fp32 = next(c for c in candidates if c.name == "fp32")
    for c in finalists:
        c.status = "measured"
        c.vs_onnxruntime = c.median_ms / ort_ms
        c.vs_fp32 = c.median_ms / fp32.median_ms
    for c in candidates:
        if c.brief_ms is not None and c.median_ms is None:
            scale = fp32.median_ms / fp32.brief_ms if fp32.brief_ms else 1.0  # brief times, on the final run's scale
            c.vs_onnxruntime = c.brief_ms * scale / ort_ms
            c.vs_fp32 = c.brief_ms / fp32.brief_ms
    measured = [c for c in finalists if c.meets]
    chosen = min(measured, key=lambda c: c.median_ms) if measured else fp32
    # Within the noise of one interleaved run, the more accurate candidate is the better choice.
    close = [c for c in measured if c.median_ms <= chosen.median_ms * (1 + NEAR_TIE)]
    accurate = max(close, key=lambda c: (c.score if criterion.min_cosine is not None else -c.score, -c.median_ms),
                   default=chosen)
    tie_note = ""
    if accurate is not chosen:
        tie_note = (f" ({chosen.name} measured {100 * (accurate.median_ms / chosen.median_ms - 1):.1f}% faster, "
                    f"within {100 * NEAR_TIE:.0f}%: the more accurate one is kept)")
        chosen = accurate
    chosen.chosen = True
    if chosen is fp32:
        why = ("fp32: no other candidate met the budget" if len(measured) <= 1 else
               "fp32: the fastest of the candidates that met the budget")
        if not criterion.meets(fp32.score) or fp32.nonfinite:
            notes.append(f"the fp32 build itself misses the budget ({criterion.metric} {fp32.score:.6g}): the "
                         "budget is tighter than lepton-opt's fp32 agreement with onnxruntime")
    else:
        why = (f"{chosen.name}: the fastest build within the budget ({criterion.metric} {chosen.score:.6g}), "
               f"{chosen.vs_fp32:.2f}x the fp32 build's time and {chosen.vs_onnxruntime:.2f}x onnxruntime's")
    why += tie_note
    _mark_pareto(candidates, criterion)
    for c in candidates:
        c.replay = _replay(c, source, shapes, output_dir)
    result = AutoResult(model=source, budget=criterion, candidates=candidates, chosen=chosen, why=why,
                        output_dir=Path(output_dir) if output_dir is not None else None,
                        seconds=time.perf_counter() - started, threads=threads, batch=batch,
                        data=split.description, onnxruntime_ms=ort_ms, reference_accuracy=reference_accuracy,
                        interrupted=interrupted, notes=notes)
    try:
        if output_dir is not None:
            _write(result, workdir / chosen.name, models[chosen.name], calibration, split.calibration_labels)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


class _Skip(Exception):
    pass


def _converted_nodes(compiled) -> int | None:
    """Nodes a precision conversion changed (None: no conversion in this build)."""
    precision = compiled.manifest.get("precision") or {}
    count = precision.get("converted_nodes", precision.get("quantized_nodes"))
    if isinstance(count, (list, dict)):
        return len(count)
    return count


def _plain_guard(guard: dict) -> dict:
    return {k: v for k, v in guard.items() if k != "labels"}


def _better(criterion: Budget, a: float, b: float) -> bool:
    return a > b if criterion.min_cosine is not None else a < b


def _serialize(model) -> bytes:
    import onnx_ir as ir

    return ir.serde.serialize_model(model).SerializeToString()


def _score(candidate: Candidate, compiled, evaluation: Batches, reference, reference_accuracy, criterion: Budget,
           batch: int, n: int) -> None:
    got = stack_outputs([compiled.run(f) for f in evaluation.feeds], evaluation.valid, batch)
    stats = accuracy_stats(reference, got, n, evaluation.labels)
    candidate.cosine, candidate.max_error = stats.cosine, stats.max_rel
    candidate.nonfinite = sum(nonfinite_mismatch(np.asarray(reference[k], np.float64), np.asarray(got[k], np.float64))
                              for k in reference)
    if stats.task_accuracy is not None:
        candidate.task_accuracy = 100 * stats.task_accuracy
    if criterion.max_accuracy_drop is not None:
        candidate.score = reference_accuracy - candidate.task_accuracy
    elif criterion.min_cosine is not None:
        candidate.score = stats.cosine
    else:
        candidate.score = stats.max_rel


def _brief_ms(compiled, feeds) -> float:
    compiled.run(feeds)
    times = []
    for _ in range(BRIEF_RUNS):
        start = time.perf_counter()
        compiled.run(feeds)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _final_timing(finalists: list[Candidate], built: dict, proto, feeds, threads: int, output_names) -> float:
    """Median ms of every finalist and of onnxruntime fp32, timed interleaved in one run
    (onnxruntime without thread spinning, as the benchmark runner times it)."""
    session = ort_session(proto.SerializeToString(), threads=threads, optimize=True, spinning=False)
    calls = [lambda c=c: built[c.name].run(feeds) for c in finalists] + [lambda: session.run(output_names, feeds)]
    per_round = sum(c.brief_ms for c in finalists) / 1e3 * 2 + 1e-4
    rounds = int(min(500, max(10, FINAL_DURATION_S / per_round)))
    times = time_interleaved(calls, rounds, warmup=2, shuffle_seed=0)
    for c, t in zip(finalists, times):
        c.median_ms = statistics.median(t)
    return statistics.median(times[-1])


def _mark_pareto(candidates: list[Candidate], criterion: Budget) -> None:
    """Candidates no other one beats on both latency and accuracy."""
    scored = [c for c in candidates if c.vs_fp32 is not None and c.score is not None and not c.nonfinite]

    def accuracy(c):  # larger is better
        return c.score if criterion.min_cosine is not None else -c.score

    for c in scored:
        c.pareto = not any(o is not c and o.vs_fp32 <= c.vs_fp32 and accuracy(o) >= accuracy(c)
                           and (o.vs_fp32 < c.vs_fp32 or accuracy(o) > accuracy(c)) for o in scored)


def _replay(c: Candidate, source: str, shapes: dict, output_dir) -> str:
    """The commands that rebuild candidate ``c`` (its calibration split from ``output_dir``)."""
    if c.status in ("skipped", "failed") or not c.recipe:
        return ""
    out = Path(output_dir) if output_dir is not None else Path("auto")
    model = source if Path(source).is_file() else "MODEL.onnx"  # a model given as an object has no path
    shapes_flags = " ".join(f"--input-shape {k}:{'x'.join(map(str, v))}" for k, v in shapes.items())
    recipe = c.recipe
    data = f"--data {out / 'calibration.npz'}" if recipe.get("calibrated") else ""

    def budget(options: dict) -> str:
        flags = " ".join(f"--{k.replace('_', '-')} {v:g}" for k, v in options.items())
        return flags + (f" --labels {out / 'calibration_labels.npy'}" if "max_accuracy_drop" in options else "")

    steps = []
    if recipe.get("prune") is not None:
        steps.append(f"lepton-opt prune {model} -m channel {budget(recipe['prune'])} {data} "
                     f"-o {out / 'pruned.onnx'} {shapes_flags}")
        model = str(out / "pruned.onnx")
    tune = f"lepton-opt tune {{model}} {shapes_flags}" if recipe.get("tuned") else ""
    precision = recipe.get("precision")
    if precision == "int8":
        mode = recipe.get("mode", "static")
        method = f"--method {recipe['method']}" if recipe.get("method") else ""
        steps.append(f"lepton-opt quantize {model} --mode {mode} {method} {data if mode == 'static' else ''} "
                     f"{budget(recipe.get('guard') or {})} -o {out / 'model.int8.onnx'} {shapes_flags}")
        model = str(out / "model.int8.onnx")
        steps += [tune.format(model=model)] if tune else []
        steps.append(f"lepton-opt compile {model} {shapes_flags} -o {out / 'model.lepton'}")
    elif precision in ("fp16", "bf16"):
        steps.append(f"lepton-opt compile {model} --precision {precision} {budget(recipe.get('guard') or {})} "
                     f"{data} {shapes_flags} -o {out / 'model.lepton'}")
    else:
        steps += [tune.format(model=model)] if tune else []
        steps.append(f"lepton-opt compile {model} {shapes_flags} -o {out / 'model.lepton'}")
    return " && ".join(" ".join(step.split()) for step in steps)


# ----------------------------------------------------------------------------------- output
def _write(result: AutoResult, artifact: Path, model: onnx.ModelProto, calibration, calibration_labels) -> None:
    """The chosen artifact (saved when it was built, its manifest completed here), its ONNX
    model, the calibration split and the reports; each file written whole or not at all."""
    from lepton_opt.targets.artifact import MANIFEST, load_compiled

    out = result.output_dir
    out.mkdir(parents=True, exist_ok=True)
    chosen = result.chosen
    manifest = json.loads((artifact / MANIFEST).read_text())
    manifest["auto"].update(score=chosen.score, replay=chosen.replay)
    (artifact / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")  # the manifest is not hashed
    load_compiled(artifact).save(out / "model.lepton")
    tmp = out / ".model.onnx.tmp"
    if not isinstance(model, onnx.ModelProto):  # mixed precision gives an onnx-ir model
        model = onnx.ModelProto.FromString(_serialize(model))
    onnx.save(model, tmp)
    os.replace(tmp, out / "model.onnx")
    if calibration is not None:
        np.savez(out / "calibration.npz", **calibration)
    if calibration_labels is not None:
        np.save(out / "calibration_labels.npy", calibration_labels)
    doc = result.to_json()
    (out / "report.json").write_text(json.dumps(_strict(doc), indent=2, allow_nan=False) + "\n")
    (out / "report.md").write_text(markdown_report(result))
    (out / "report.html").write_text(html_report(result))


def _strict(value):
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strict(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _fmt(value, spec: str = ".4g") -> str:
    return "" if value is None else format(value, spec)


def _table_rows(result: AutoResult) -> list[list[str]]:
    rows = []
    for c in result.candidates:
        rows.append([("**" + c.name + "**") if c.chosen else c.name, c.status, _fmt(c.score, ".6g"),
                     _fmt(c.cosine, ".6f"), _fmt(c.task_accuracy, ".2f"), _fmt(c.median_ms or c.brief_ms, ".3f"),
                     _fmt(c.vs_onnxruntime, ".2f"), _fmt(c.vs_fp32, ".2f"), _fmt(c.build_s, ".1f"),
                     "yes" if c.pareto else "", c.reason])
    return rows


_HEADER = ["candidate", "status", "score", "cosine", "top-1 %", "ms", "vs onnxruntime", "vs fp32", "build s",
           "Pareto", "notes"]


def markdown_report(result: AutoResult) -> str:
    lines = [f"# lepton-opt auto: {Path(result.model).name}", "",
             f"- budget: {result.budget.describe()} ({result.budget.metric} is the score below)",
             f"- judged on: {result.data}",
             f"- chosen: **{result.chosen.name}** -- {result.why}",
             f"- replay: `{result.chosen.replay}`",
             f"- onnxruntime fp32: {_fmt(result.onnxruntime_ms, '.3f')} ms; {result.threads} threads; "
             f"search took {result.seconds:.0f} s" + (" (interrupted)" if result.interrupted else ""),
             *(f"- note: {n}" for n in result.notes), "",
             "| " + " | ".join(_HEADER) + " |", "|" + "---|" * len(_HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in _table_rows(result)]
    lines += ["", "ms: median of the interleaved run for measured candidates, the brief time otherwise; "
              "ratios below 1 are faster."]
    return "\n".join(lines) + "\n"


def html_report(result: AutoResult) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in _HEADER)
    body = "".join("<tr" + (' class="chosen"' if c.chosen else "") + ">" +
                   "".join(f"<td>{html.escape(v.strip('*'))}</td>" for v in row) + "</tr>"
                   for c, row in zip(result.candidates, _table_rows(result)))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>lepton-opt auto: "
            f"{html.escape(Path(result.model).name)}</title><style>body{{font-family:sans-serif;margin:2em}}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;font-size:90%}"
            "tr.chosen{background:#e6f4ea;font-weight:bold}</style></head><body>"
            f"<h1>lepton-opt auto: {html.escape(Path(result.model).name)}</h1>"
            f"<p>Budget: {html.escape(result.budget.describe())}. Judged on: {html.escape(result.data)}.</p>"
            f"<p>Chosen: <b>{html.escape(result.chosen.name)}</b> &mdash; {html.escape(result.why)}</p>"
            f"<p>Replay: <code>{html.escape(result.chosen.replay)}</code></p>"
            f"{pareto_svg(result)}<table><tr>{head}</tr>{body}</table>"
            f"<p>Generated {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}.</p>"
            "</body></html>\n")


def pareto_svg(result: AutoResult, width: int = 560, height: int = 320) -> str:
    """Latency (vs fp32) against the budget's metric, every scored candidate a dot, the Pareto
    front joined, the chosen one ringed."""
    points = [c for c in result.candidates if c.vs_fp32 is not None and c.score is not None
              and math.isfinite(c.score)]
    if not points:
        return ""
    xs, ys = [c.vs_fp32 for c in points], [c.score for c in points]
    x0, x1 = min(xs + [1.0]) * 0.9, max(xs + [1.0]) * 1.1
    y0, y1 = min(ys), max(ys)
    if y1 - y0 < 1e-12:
        y0, y1 = y0 - 1e-3, y1 + 1e-3
    pad = 50

    def px(x):
        return pad + (x - x0) / (x1 - x0) * (width - 2 * pad)

    def py(y):
        return height - pad - (y - y0) / (y1 - y0) * (height - 2 * pad)

    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' style='margin:1em 0'>",
             f"<line x1='{pad}' y1='{height - pad}' x2='{width - pad}' y2='{height - pad}' stroke='#333'/>",
             f"<line x1='{pad}' y1='{pad}' x2='{pad}' y2='{height - pad}' stroke='#333'/>",
             f"<text x='{width / 2}' y='{height - 12}' text-anchor='middle' font-size='12'>time vs the fp32 build "
             f"(lower is faster)</text>",
             f"<text x='14' y='{height / 2}' font-size='12' transform='rotate(-90 14 {height / 2})' "
             f"text-anchor='middle'>{html.escape(result.budget.metric)}</text>"]
    front = sorted((c for c in points if c.pareto), key=lambda c: c.vs_fp32)
    if len(front) > 1:
        path = " ".join(f"{px(c.vs_fp32):.1f},{py(c.score):.1f}" for c in front)
        parts.append(f"<polyline points='{path}' fill='none' stroke='#1a73e8' stroke-dasharray='4 3'/>")
    for c in points:
        colour = "#1a73e8" if c.meets else "#d93025"
        parts.append(f"<circle cx='{px(c.vs_fp32):.1f}' cy='{py(c.score):.1f}' r='5' fill='{colour}'/>")
        if c.chosen:
            parts.append(f"<circle cx='{px(c.vs_fp32):.1f}' cy='{py(c.score):.1f}' r='9' fill='none' "
                         "stroke='#188038' stroke-width='2'/>")
        parts.append(f"<text x='{px(c.vs_fp32) + 8:.1f}' y='{py(c.score) - 6:.1f}' font-size='11'>"
                     f"{html.escape(c.name)}</text>")
    parts.append("</svg>")
    return "".join(parts)
