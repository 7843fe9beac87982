"""Pruning: unstructured magnitude, structured channel and 2:4 semi-structured sparsity.

``prune(model, method, sparsity)`` returns a standard ONNX model and a per-layer report. No
retraining is available, so with a budget (``max_error``, or ``max_accuracy_drop`` with
labelled data) a sensitivity scan chooses the per-layer ratios: each layer is pruned alone at
every ratio of a grid and measured with onnxruntime on calibration inputs; then the largest
per-layer error threshold whose combined model still meets the budget is found by bisection.

What the methods buy (stated in every report):

- ``channel`` removes whole output channels and the matching inputs downstream: a smaller
  dense model, faster on every engine.
- ``magnitude`` zeroes single weights: dense kernels (onnxruntime, lepton-opt builds) do the
  same work on zeros, so no speed-up; the gain is the compressed size.
- ``2:4`` zeroes 2 of every 4 weights along the reduction axis: NVIDIA tensor cores from
  Ampere (sm_80) on run this pattern at up to twice the dense rate through sparse kernels
  (cuSPARSELt, TensorRT); lepton-opt's builds and onnxruntime run it dense.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx
import onnx_ir as ir

from lepton_opt.errors import InputError, OptionError
from lepton_opt.ir.load import InputShapes, ModelSource, load_model
from lepton_opt.passes.prune import channels as channel_pruning
from lepton_opt.passes.prune.weights import (
    magnitude_masks,
    prunable_weights,
    set_weight,
    two_four_mask,
    two_four_violations,
)

METHODS = ("magnitude", "channel", "2:4")
SCAN_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

HARDWARE_NOTES = {
    "channel": "channel pruning leaves a smaller dense model: fewer multiply-adds on every engine "
               "(onnxruntime and lepton-opt builds alike)",
    "magnitude": "unstructured zeros do not speed up dense kernels: onnxruntime and lepton-opt builds do the "
                 "same multiply-adds on them; the gain is the size of the model when stored compressed",
    "2:4": "2:4 sparsity is run fast by NVIDIA sparse tensor cores (Ampere sm_80 and newer, via cuSPARSELt or "
           "TensorRT sparse kernels); lepton-opt's CPU and CUDA builds and onnxruntime run these weights dense, "
           "so the gain here is the compressed size",
}


@dataclasses.dataclass
class LayerPruning:
    name: str  # the node (weights) or the producers of a channel group
    op: str
    shape_before: list[int]
    shape_after: list[int]
    ratio: float  # zeroed share of the weight, or removed share of the channels
    note: str | None = None


@dataclasses.dataclass
class ScanResult:
    metric: str  # "max rel error" or "accuracy drop (points)"
    budget: float
    achieved: float
    sensitivity: dict[str, dict[float, float]]  # unit -> ratio -> metric when pruned alone
    ratios: dict[str, float]
    evaluations: int


@dataclasses.dataclass
class PruneResult:
    """What :func:`prune` did. ``model`` is a standard ONNX model."""

    model: onnx.ModelProto
    method: str
    requested: float
    achieved: float  # zeroed weights (magnitude, 2:4) or removed channels (channel), over what could be pruned
    layers: list[LayerPruning]
    params_before: int
    params_after: int
    nonzero_after: int
    bytes_before: int
    bytes_after: int
    compressed_before: int
    compressed_after: int
    skipped: list[tuple[str, str]]  # (layer or group, why it was left alone)
    hardware: str
    scan: ScanResult | None = None


def prune(
    model: ModelSource,
    method: str = "channel",
    sparsity: float | None = None,
    *,
    scope: str = "global",
    criterion: str = "l1",
    channel_multiple: int = 8,
    layers: Sequence[str] | None = None,
    max_error: float | None = None,
    max_accuracy_drop: float | None = None,
    data=None,
    labels=None,
    samples: int = 8,
    seed: int = 0,
    input_shapes: InputShapes | None = None,
) -> PruneResult:
    """Prune ``model`` with ``method`` ("magnitude", "channel" or "2:4").

    ``sparsity`` is the share of weights to zero (magnitude: over all prunable weights with
    ``scope="global"``, per weight with ``"layer"``) or of channels to remove per channel group
    (channel), the kept count rounded to a multiple of ``channel_multiple`` (1: no rounding);
    2:4 is always half. With ``max_error`` (largest output error relative to the
    largest reference value) or ``max_accuracy_drop`` (points of top-1 accuracy; needs ``data``
    and ``labels``) a sensitivity scan picks per-layer ratios up to ``sparsity`` (default 0.9)
    instead. ``layers`` limits pruning to nodes or weights matching shell patterns.
    """
    if method not in METHODS:
        raise OptionError(f"unknown pruning method {method!r}; choose from {', '.join(METHODS)}")
    if criterion not in ("l1", "l2"):
        raise OptionError(f"unknown channel criterion {criterion!r}; choose l1 or l2")
    if channel_multiple < 1:
        raise OptionError(f"--channel-multiple must be at least 1, got {channel_multiple}")
    if scope not in ("global", "layer"):
        raise OptionError(f"unknown scope {scope!r}; choose global or layer")
    budgeted = max_error is not None or max_accuracy_drop is not None
    if max_error is not None and max_accuracy_drop is not None:
        raise OptionError("give one budget: --max-error or --max-accuracy-drop")
    if method == "2:4":
        if sparsity not in (None, 0.5):
            raise OptionError(f"2:4 sparsity is always 0.5 (2 of every 4 weights); got --sparsity {sparsity}")
        sparsity = 0.5
    elif sparsity is None:
        if not budgeted:
            raise OptionError(f"--sparsity is needed for {method} pruning (or a budget: --max-error or "
                              "--max-accuracy-drop)")
        sparsity = max(SCAN_GRID)
    if not 0.0 <= sparsity < 1.0:
        raise OptionError(f"--sparsity must be in [0, 1), got {sparsity}")

    loaded = load_model(model, input_shapes)
    source = loaded.source
    base = _with_shapes(ir.serde.serialize_model(loaded.model))
    pruner = _Pruner(base, method, criterion, layers, source, channel_multiple)

    scan = None
    if budgeted:
        from lepton_opt.passes.calibration import Evaluator

        evaluator = Evaluator(base, data, labels, samples, seed, source, max_accuracy_drop is not None)
        grid = (1.0,) if method == "2:4" else tuple(r for r in SCAN_GRID if r <= sparsity + 1e-9)
        scan = _scan(pruner, evaluator, grid, max_error if max_error is not None else max_accuracy_drop)
        ratios = scan.ratios
    elif method == "magnitude" and scope == "global":
        ratios = {"*": sparsity}
    else:
        ratios = {u: (1.0 if method == "2:4" else sparsity) for u in pruner.units}
    pruned, layer_rows = pruner.build(ratios, report=True)
    return _result(base, pruned, method, sparsity, layer_rows, pruner, scan)


def _with_shapes(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` with inferred value shapes (the channel analysis needs ranks and sizes)."""
    del proto.graph.value_info[:]
    try:
        return onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except Exception:
        return proto


class _Pruner:
    """Builds pruned copies of ``base`` from a plan: unit name -> ratio."""

    def __init__(self, base: onnx.ModelProto, method: str, criterion: str, layers, source: str, multiple: int = 1):
        self.base, self.method, self.criterion, self.source = base, method, criterion, source
        self.multiple = multiple
        model = ir.serde.deserialize_model(base)
        self.skipped: list[tuple[str, str]] = []
        if method == "channel":
            analysis = channel_pruning.analyze(model, criterion)
            self.units = []
            for group in analysis.groups:
                name = _group_name(group)
                if layers and not _matches(group.producers, layers):
                    continue
                if group.frozen:
                    self.skipped.append((name, group.frozen))
                elif group.size < 2:
                    self.skipped.append((name, "a single channel"))
                else:
                    self.units.append(name)
        else:
            weights = prunable_weights(model, layers)
            self.units = []
            for w in weights:
                if method == "2:4" and w.array.shape[w.reduction_axis] % 4:
                    self.skipped.append((_weight_name(w), f"reduction axis of {w.array.shape[w.reduction_axis]} is "
                                                          "not a multiple of 4"))
                else:
                    self.units.append(_weight_name(w))
        if not self.units:
            why = "; ".join(f"{n}: {r}" for n, r in self.skipped[:3]) or "no Conv, ConvTranspose, Gemm or MatMul " \
                                                                          "with an initializer weight"
            raise InputError(f"{source}: nothing to prune with {method} ({why})")

    def build(self, ratios: Mapping[str, float], report: bool = False):
        model = ir.serde.deserialize_model(self.base)
        rows: list[LayerPruning] = []
        if self.method == "channel":
            analysis = channel_pruning.analyze(model, self.criterion)
            by_name = {_group_name(g): g for g in analysis.groups}
            plan = {by_name[u].root: r for u, r in ratios.items() if u in by_name}
            kept = channel_pruning.keep_indices(analysis, plan, self.multiple)
            channel_pruning.apply(model, analysis, kept)
            if report:
                for name in self.units:
                    group = by_name[name]
                    after = len(kept[group.root])
                    rows.append(LayerPruning(name, "channels", [group.size], [after], 1 - after / group.size))
            proto = ir.serde.serialize_model(model)  # shapes are inferred once, for the result
        else:
            weights = {_weight_name(w): w for w in prunable_weights(model)}
            chosen = [weights[u] for u in self.units]
            if self.method == "magnitude":
                per_weight = {w.name: ratios.get(_weight_name(w), 0.0) for w in chosen}
                masks = magnitude_masks(chosen, per_weight, ratios.get("*"))
            else:
                masks = {w.name: two_four_mask(w.array, w.reduction_axis) for w in chosen
                         if ratios.get(_weight_name(w), 0.0) > 0}
            for w in chosen:
                mask = masks.get(w.name)
                before = list(w.array.shape)
                if mask is not None:
                    set_weight(w, np.where(mask, w.array, np.zeros((), w.array.dtype)))
                if report:
                    rows.append(LayerPruning(_weight_name(w), w.node.op_type, before, before,
                                             float((w.array == 0).mean())))
            proto = ir.serde.serialize_model(model)
        return proto, rows


def _weight_name(w) -> str:
    return w.node.name or w.value.name


def _group_name(group) -> str:
    return "+".join(group.producers[:3]) + (f"+{len(group.producers) - 3} more" if len(group.producers) > 3 else "")


def _matches(names: Sequence[str], patterns: Sequence[str]) -> bool:
    import fnmatch

    return any(fnmatch.fnmatchcase(n, p) for n in names for p in patterns)


def _scan(pruner: _Pruner, evaluate: Callable[[onnx.ModelProto], float], grid: tuple[float, ...],
          budget: float) -> ScanResult:
    sensitivity: dict[str, dict[float, float]] = {}
    for unit in pruner.units:
        sensitivity[unit] = {}
        for ratio in grid:
            sensitivity[unit][ratio] = evaluate(pruner.build({unit: ratio})[0])

    def plan(threshold: float) -> dict[str, float]:
        ratios = {}
        for unit, errors in sensitivity.items():
            best = 0.0
            for ratio in grid:  # the largest ratio whose error and every smaller ratio's stay within
                if errors[ratio] > threshold:
                    break
                best = ratio
            if best:
                ratios[unit] = best
        return ratios

    thresholds = sorted({e for errors in sensitivity.values() for e in errors.values() if e <= budget})
    best_plan, best_metric = {}, 0.0
    lo, hi = 0, len(thresholds) - 1
    while lo <= hi:  # largest threshold whose combined model meets the budget
        mid = (lo + hi) // 2
        candidate = plan(thresholds[mid])
        metric = evaluate(pruner.build(candidate)[0]) if candidate else 0.0
        if metric <= budget:
            best_plan, best_metric, lo = candidate, metric, mid + 1
        else:
            hi = mid - 1
    name = "accuracy drop (points)" if getattr(evaluate, "accuracy", False) else "max rel error"
    return ScanResult(name, budget, best_metric, sensitivity, best_plan, getattr(evaluate, "count", 0))


def _params(proto: onnx.ModelProto) -> tuple[int, int]:
    total = nonzero = 0
    for init in proto.graph.initializer:
        array = onnx.numpy_helper.to_array(init)
        if array.dtype.kind == "f":
            total += array.size
            nonzero += int(np.count_nonzero(array))
    return total, nonzero


def _result(base, pruned, method, requested, rows, pruner, scan) -> PruneResult:
    before, _ = _params(base)
    after, nonzero = _params(pruned)
    base_bytes, pruned_bytes = base.SerializeToString(), pruned.SerializeToString()
    if method == "channel":
        total = sum(r.shape_before[0] for r in rows)
        achieved = sum(r.shape_before[0] - r.shape_after[0] for r in rows) / total if total else 0.0
    else:
        sizes = [int(np.prod(r.shape_before)) for r in rows]
        achieved = sum(r.ratio * s for r, s in zip(rows, sizes)) / sum(sizes) if sizes else 0.0
    if method == "channel":  # channel counts changed: infer the value shapes again
        pruned = _with_shapes(pruned)
    return PruneResult(
        model=pruned, method=method, requested=requested, achieved=achieved, layers=rows,
        params_before=before, params_after=after, nonzero_after=nonzero,
        bytes_before=len(base_bytes), bytes_after=len(pruned_bytes),
        compressed_before=len(zlib.compress(base_bytes, 6)), compressed_after=len(zlib.compress(pruned_bytes, 6)),
        skipped=pruner.skipped, hardware=HARDWARE_NOTES[method], scan=scan,
    )


def check_two_four(model: onnx.ModelProto | ir.Model, layers: Sequence[str] | None = None) -> dict[str, int]:
    """Per 2:4-eligible weight: groups of 4 along the reduction axis with fewer than 2 zeros."""
    if isinstance(model, onnx.ModelProto):
        model = ir.serde.deserialize_model(model)
    return {_weight_name(w): two_four_violations(w.array, w.reduction_axis)
            for w in prunable_weights(model, layers) if w.array.shape[w.reduction_axis] % 4 == 0}


__all__ = ["METHODS", "PruneResult", "check_two_four", "prune"]
