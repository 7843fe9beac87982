"""Int8 quantization: calibrated static QDQ, dynamic, and weight-only, on onnxruntime's quantizer.

onnxruntime's quantization tooling is the reference users know, and its calibrators (MinMax,
Percentile, Entropy/KL) and QDQ writer are well kept, so lepton-opt drives them rather than
re-implementing them. What lepton-opt adds:

* **Defaults that compile to fast int8 kernels** (:mod:`lepton_opt.targets.ops.quant`): Conv,
  MatMul and Gemm are quantized, weights int8, symmetric, per output channel; activations
  per tensor, uint8 asymmetric (``activation_type="int8"`` and ``symmetric_activations`` give the
  other forms; the build handles both). A MatMul whose inputs are both computed (attention's
  Q.K^T and P.V) stays float by default: only constant weights can be packed for the int8
  kernel, and attention scores are the most sensitive values of a transformer.
* **Calibration data** as everywhere in lepton-opt: an ``.npz`` (or mapping) of input arrays with
  samples on axis 0, else seeded random inputs with a warning (random inputs give ranges unlike
  real data). Calibration runs once; the accuracy guard re-quantizes with the cached ranges.
* **Control**: ``exclude_nodes``, ``exclude_op_types``, ``keep_first_last`` (the first and last
  quantized nodes stay float).
* **An accuracy guard**: with ``min_cosine`` (smallest output cosine against the float model) or
  ``max_accuracy_drop`` (top-1 accuracy points on labelled data), nodes are ranked by the error
  quantization adds at their output (onnxruntime running the float and the QDQ model with
  intermediates exposed), and the most sensitive are kept in float, 1, 2, 4, ... then bisected
  to the fewest that meet the budget. The report names them.

``mode="dynamic"`` is onnxruntime's dynamic quantization of MatMul/Gemm (DynamicQuantizeLinear +
MatMulInteger: activations quantized at run time, per tensor). ``mode="weight-only"`` stores the
MatMul/Gemm weights as int8 with a per-channel DequantizeLinear (4x smaller weights, float
compute). Every output uses standard ONNX ops only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from lepton_opt.errors import InputError, OptionError
from lepton_opt.passes.budget import fewest_kept, meets

MODES = ("static", "dynamic", "weight-only")
METHODS = ("minmax", "percentile", "entropy")
TYPES = ("uint8", "int8")
DEFAULT_OP_TYPES = ("Conv", "MatMul", "Gemm")
DEFAULT_CALIBRATION_SAMPLES = 32
_ENTROPY_BINS = 2048  # histogram bins of the entropy (KL) calibration, as TensorRT's
_MAX_GUARD_TRIALS = 16


@dataclasses.dataclass
class ExcludedNode:
    name: str
    op_type: str
    reason: str


@dataclasses.dataclass
class QuantizeGuard:
    """What the accuracy guard did: budget, data, metric before and after, nodes kept float."""

    metric: str  # "cosine" or "accuracy_drop" (points)
    budget: float
    data: str
    quantized: float  # the metric with every candidate quantized
    final: float
    kept: list[ExcludedNode]
    evaluations: int


@dataclasses.dataclass
class QuantizeResult:
    """A quantized model (``onnx.ModelProto``), what was quantized, what stayed float and why."""

    model: onnx.ModelProto
    mode: str
    method: str | None
    quantized: dict[str, int]  # op type -> quantized node count
    excluded: list[ExcludedNode]
    guard: QuantizeGuard | None
    warnings: list[str]
    calibration: str | None  # the calibration data's description
    ir_model: object = None  # the model in the IR, set when the build lowers it


def quantize(
    model,
    *,
    mode: str = "static",
    data=None,
    samples: int = DEFAULT_CALIBRATION_SAMPLES,
    method: str = "minmax",
    percentile: float = 99.999,
    per_channel: bool = True,
    activation_type: str = "uint8",
    symmetric_activations: bool = False,
    op_types: Iterable[str] | None = None,
    exclude_nodes: Iterable[str] = (),
    exclude_op_types: Iterable[str] = (),
    keep_first_last: bool = False,
    min_cosine: float | None = None,
    max_accuracy_drop: float | None = None,
    labels=None,
    seed: int = 0,
    input_shapes=None,
    progress: Callable[[str], None] | None = None,
    source: str | None = None,
) -> QuantizeResult:
    """Quantize ``model`` (a path, bytes, ``onnx.ModelProto`` or ``ir.Model``; never modified).

    See the module docstring. ``data`` (``.npz`` path or mapping, samples on axis 0) calibrates
    and scores the guard; without it ``samples`` seeded random inputs are used, with a warning.
    ``max_accuracy_drop`` is in top-1 accuracy points and needs ``labels``. ``source`` names the
    model in messages (default: its path).
    """
    from lepton_opt.ir.load import load_model
    from lepton_opt.passes.calibration import Evaluator

    _check_options(mode, method, activation_type, min_cosine, max_accuracy_drop, labels, percentile, samples)
    note = progress or (lambda _msg: None)
    import onnx_ir as ir

    loaded = load_model(model, input_shapes)
    source = source or loaded.source

    proto = onnx.shape_inference.infer_shapes(ir.serde.serialize_model(loaded.model))
    _name_nodes(proto)
    if mode == "dynamic":
        _gemm_as_matmul(proto)
    warnings: list[str] = []
    candidates, excluded = _select(proto, mode, op_types, exclude_nodes, exclude_op_types, keep_first_last, source)
    if not candidates:
        raise InputError(f"{source}: no node to quantize (op types {', '.join(_op_types(mode, op_types))}"
                         + (f", after {len(excluded)} exclusion(s)" if excluded else "") + ")")

    if mode == "weight-only":
        quantized = _weight_only(proto, candidates, per_channel)
        return QuantizeResult(quantized, mode, None, _counts(proto, candidates), excluded, None, warnings, None)

    guarded = min_cosine is not None or max_accuracy_drop is not None
    evaluator = None
    if mode == "static" or guarded:
        note("running the float model on the calibration inputs")
        evaluator = Evaluator(proto, data, labels, samples, seed, source, accuracy=max_accuracy_drop is not None)
        if evaluator.seeded:
            warnings.append(f"no --data: calibrated on {evaluator.description}; the activation ranges of real "
                            "inputs differ, so give representative data (--data) for a model you deploy")

    with tempfile.TemporaryDirectory(prefix="lepton-quant-") as tmp:
        quantizer = _Quantizer(proto, mode, method, percentile, per_channel, activation_type, symmetric_activations,
                               candidates, evaluator, Path(tmp))
        note(f"calibrating ({method})" if mode == "static" else "quantizing")
        result = quantizer.quantize(set())
        guard = None
        if guarded:
            metric, budget = ("cosine", min_cosine) if min_cosine is not None else ("accuracy_drop", max_accuracy_drop)
            guard, result = _guard(quantizer, evaluator, metric, budget, result, note)
            excluded += guard.kept
            if not meets(metric, budget, guard.final):
                warnings.append(f"the accuracy budget is not met: {_metric_text(metric, guard.final)} against "
                                f"{budget:g}, with every candidate node kept float")
    kept = {k.name for k in (guard.kept if guard else [])}
    quantized_nodes = [n for n in candidates if n not in kept]
    return QuantizeResult(result, mode, method if mode == "static" else None, _counts(proto, quantized_nodes),
                          excluded, guard, warnings, evaluator.description if evaluator else None)


# ----------------------------------------------------------------------------------------
# Options and node selection
# ----------------------------------------------------------------------------------------

def _check_options(mode, method, activation_type, min_cosine, max_accuracy_drop, labels, percentile, samples):
    if mode not in MODES:
        raise OptionError(f"unknown quantization mode {mode!r}; choose from {', '.join(MODES)}")
    if method not in METHODS:
        raise OptionError(f"unknown calibration method {method!r}; choose from {', '.join(METHODS)}")
    if activation_type not in TYPES:
        raise OptionError(f"unknown activation type {activation_type!r}; choose from {', '.join(TYPES)}")
    if min_cosine is not None and max_accuracy_drop is not None:
        raise OptionError("give one budget: --min-cosine or --max-accuracy-drop")
    if min_cosine is not None and not -1.0 <= min_cosine <= 1.0:
        raise OptionError(f"--min-cosine must be in [-1, 1], got {min_cosine}")
    if max_accuracy_drop is not None and not max_accuracy_drop >= 0:
        raise OptionError(f"--max-accuracy-drop must be >= 0 (accuracy points), got {max_accuracy_drop}")
    if max_accuracy_drop is not None and labels is None:
        raise OptionError("--max-accuracy-drop needs labelled data: give --data and --labels")
    if mode == "weight-only" and (min_cosine is not None or max_accuracy_drop is not None):
        raise OptionError("the accuracy guard applies to static and dynamic quantization, not weight-only")
    if not 0 < percentile <= 100:
        raise OptionError(f"--percentile must be in (0, 100], got {percentile}")
    if samples < 1:
        raise OptionError(f"--calibration-samples must be at least 1, got {samples}")


def _op_types(mode: str, op_types) -> tuple[str, ...]:
    if op_types is not None:
        return tuple(op_types)
    return DEFAULT_OP_TYPES if mode == "static" else ("MatMul", "Gemm")


def _select(proto: onnx.ModelProto, mode, op_types, exclude_nodes, exclude_op_types, keep_first_last,
            source) -> tuple[list[str], list[ExcludedNode]]:
    """The names of the nodes to quantize, in graph order, and those excluded with the reason."""
    wanted = _op_types(mode, op_types)
    constants = {t.name for t in proto.graph.initializer}
    constants |= {o for n in proto.graph.node if n.op_type == "Constant" for o in n.output}
    names = [n.name for n in proto.graph.node]
    unknown = sorted(set(exclude_nodes) - set(names))
    if unknown:
        raise OptionError(f"--exclude-nodes: no node named {', '.join(map(repr, unknown))} in {source}")
    present = {n.op_type for n in proto.graph.node}
    unknown_ops = sorted(set(exclude_op_types) - present)
    if unknown_ops:
        raise OptionError(f"--exclude-op-types: {source} has no {', '.join(unknown_ops)} node "
                          f"(it has {', '.join(sorted(present))})")
    candidates, excluded = [], []
    for node in proto.graph.node:
        if node.op_type not in wanted:
            continue
        if node.name in set(exclude_nodes):
            excluded.append(ExcludedNode(node.name, node.op_type, "excluded by --exclude-nodes"))
        elif node.op_type in set(exclude_op_types):
            excluded.append(ExcludedNode(node.name, node.op_type, "excluded by --exclude-op-types"))
        elif node.op_type == "MatMul" and not any(i in constants for i in node.input):
            excluded.append(ExcludedNode(node.name, node.op_type,
                                         "both inputs are computed (attention): no constant weight to pack"))
        elif mode == "weight-only" and node.input[1] not in constants:
            excluded.append(ExcludedNode(node.name, node.op_type, "its weight is computed, not stored"))
        else:
            candidates.append(node.name)
    if keep_first_last and candidates:
        ends = list(dict.fromkeys([candidates[0], candidates[-1]]))
        ops = {n.name: n.op_type for n in proto.graph.node}
        excluded += [ExcludedNode(n, ops[n], "first/last quantizable node (--keep-first-last)") for n in ends]
        candidates = [n for n in candidates if n not in ends]
    return candidates, excluded


def _name_nodes(proto: onnx.ModelProto) -> None:
    """Name the unnamed nodes (``Relu_3``): exclusions, the guard and onnxruntime's quantizer
    address nodes by name."""
    taken = {n.name for n in proto.graph.node}
    for i, node in enumerate(proto.graph.node):
        if not node.name:
            name, k = f"{node.op_type}_{i}", 0
            while name in taken:
                k += 1
                name = f"{node.op_type}_{i}_{k}"
            node.name = name
            taken.add(name)


def _gemm_as_matmul(proto: onnx.ModelProto) -> None:
    """Gemm nodes with a stored weight (the -O2 passes fuse every MatMul + bias Add into one)
    become MatMul + Add, under the Gemm's name: onnxruntime's dynamic quantizer has no Gemm and
    would leave them in float without a word."""
    from onnx import numpy_helper

    weights = {t.name: t for t in proto.graph.initializer}
    nodes = []
    for node in proto.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "Gemm" or node.input[1] not in weights or attrs.get("transA", 0)
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            nodes.append(node)
            continue
        weight = node.input[1]
        if attrs.get("transB", 0):
            array = numpy_helper.to_array(weights[weight]).T
            weight = f"{weight}_transposed_for_{node.name}"
            proto.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array), weight))
        has_bias = len(node.input) > 2 and node.input[2]
        product = f"{node.output[0]}_matmul" if has_bias else node.output[0]
        nodes.append(onnx.helper.make_node("MatMul", [node.input[0], weight], [product], name=node.name))
        if has_bias:
            nodes.append(onnx.helper.make_node("Add", [product, node.input[2]], [node.output[0]],
                                               name=f"{node.name}_bias"))
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)


def _counts(proto: onnx.ModelProto, names: Iterable[str]) -> dict[str, int]:
    ops = {n.name: n.op_type for n in proto.graph.node}
    return dict(Counter(ops[n] for n in names))


# ----------------------------------------------------------------------------------------
# onnxruntime's quantizer, calibrated once
# ----------------------------------------------------------------------------------------

class _Reader:
    """onnxruntime's CalibrationDataReader over the evaluator's batches."""

    def __init__(self, feeds):
        self._feeds = list(feeds)
        self._it = iter(self._feeds)

    def get_next(self):
        return next(self._it, None)

    def __len__(self):
        return len(self._feeds)


class _Quantizer:
    def __init__(self, proto, mode, method, percentile, per_channel, activation_type, symmetric_activations,
                 candidates, evaluator, workdir: Path):
        self.proto, self.mode, self.candidates = proto, mode, candidates
        self.per_channel, self.evaluator, self.workdir = per_channel, evaluator, workdir
        self.method, self.percentile = method, percentile
        self.activation_type, self.symmetric = activation_type, symmetric_activations
        self.cache = workdir / "ranges.json"
        self.count = 0
        # onnxruntime's quantizer is given a file: handed a ModelProto, it rewrites that proto's
        # weights into external-data references.
        self.path = workdir / "float.onnx"
        onnx.save(proto, self.path)

    def quantize(self, keep_float: set[str]) -> onnx.ModelProto:
        """The model with ``candidates`` minus ``keep_float`` quantized."""
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

        nodes = [n for n in self.candidates if n not in keep_float]
        if not nodes:  # (onnxruntime reads an empty node list as "every node")
            return self.proto
        self.count += 1
        out = self.workdir / f"quantized_{self.count}.onnx"
        ort_logger = logging.getLogger()
        level = ort_logger.level
        ort_logger.setLevel(logging.ERROR)  # onnxruntime's quantizer logs advice on the root logger
        try:
            # The entropy calibrator prints its progress to stdout: keep the command's output clean.
            with contextlib.redirect_stdout(io.StringIO()):
                if self.mode == "dynamic":
                    quantize_dynamic(self.path, out, op_types_to_quantize=sorted({*DEFAULT_OP_TYPES} - {"Conv"}),
                                     per_channel=self.per_channel, weight_type=QuantType.QInt8, nodes_to_quantize=nodes,
                                     extra_options={"MatMulConstBOnly": True})
                else:
                    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                               "entropy": CalibrationMethod.Entropy}
                    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
                    if not self.cache.exists():
                        self.calibrate(methods[self.method])
                    quantize_static(
                        self.path, out, None, quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=sorted({self.op_type(n) for n in self.candidates}),
                        per_channel=self.per_channel, activation_type=types[self.activation_type],
                        weight_type=QuantType.QInt8, nodes_to_quantize=nodes, calibrate_method=methods[self.method],
                        extra_options={"ActivationSymmetric": self.symmetric, "WeightSymmetric": True,
                                       "CalibPercentile": self.percentile},
                        calibration_cache_path=self.cache)
        finally:
            ort_logger.setLevel(level)
        return onnx.load(out)

    def calibrate(self, method) -> None:
        """Activation ranges into the cache that quantize_static reads. Run here rather than by
        quantize_static to choose the histogram size: the entropy (KL) search only considers
        clipping ranges narrower than the histogram, and onnxruntime's default histogram is as
        narrow as the quantized one (128 bins), which leaves the full range the only candidate."""
        from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

        options = {"symmetric": self.symmetric, "percentile": self.percentile}
        if self.method == "entropy":
            options.update(num_bins=_ENTROPY_BINS, num_quantized_bins=128)
        calibrator = create_calibrator(self.path, sorted({self.op_type(n) for n in self.candidates}),
                                       augmented_model_path=str(self.workdir / "augmented.onnx"),
                                       calibrate_method=method, extra_options=options)
        calibrator.collect_data(_Reader(self.evaluator.batches.feeds))
        save_tensors_data(calibrator.compute_data(), self.cache)

    def op_type(self, name: str) -> str:
        return next(n.op_type for n in self.proto.graph.node if n.name == name)


def _weight_only(proto: onnx.ModelProto, candidates: list[str], per_channel: bool) -> onnx.ModelProto:
    """MatMul/Gemm weights as int8 initializers read through DequantizeLinear (symmetric, per
    output channel unless ``per_channel`` is off)."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    inits = {t.name: t for t in out.graph.initializer}
    users = Counter(i for n in out.graph.node for i in n.input)
    new_nodes = []
    for node in out.graph.node:
        if node.name in candidates and node.input[1] in inits:
            weight = numpy_helper.to_array(inits[node.input[1]])
            trans_b = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
            axis = 0 if trans_b else weight.ndim - 1
            reduce = tuple(a for a in range(weight.ndim) if a != axis) if per_channel else None
            peak = np.abs(weight).max(axis=reduce) if per_channel else np.abs(weight).max()
            scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
            shape = [1] * weight.ndim
            if per_channel:
                shape[axis] = -1
            q = np.clip(np.rint(weight / scale.reshape(shape)), -127, 127).astype(np.int8)
            base = f"{node.input[1]}_{node.name}" if users[node.input[1]] > 1 else node.input[1]
            out.graph.initializer.extend([numpy_helper.from_array(q, base + "_int8"),
                                          numpy_helper.from_array(np.asarray(scale), base + "_scale"),
                                          numpy_helper.from_array(np.zeros_like(scale, np.int8), base + "_zero_point")])
            dq = onnx.helper.make_node("DequantizeLinear", [base + "_int8", base + "_scale", base + "_zero_point"],
                                       [base + "_dequantized"], name=base + "_DequantizeLinear",
                                       **({"axis": axis} if per_channel else {}))
            new_nodes.append(dq)
            node.input[1] = base + "_dequantized"
        new_nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(new_nodes)
    still_used = {i for n in out.graph.node for i in n.input} | {o.name for o in out.graph.output}
    kept = [t for t in out.graph.initializer if t.name in still_used]
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept)
    return out


# ----------------------------------------------------------------------------------------
# Accuracy guard
# ----------------------------------------------------------------------------------------

def _metric_text(metric: str, score: float) -> str:
    return f"cosine {score:.6f}" if metric == "cosine" else f"accuracy drop {score:.2f} points"


def _score(evaluator, metric: str, candidate: onnx.ModelProto) -> float:
    if metric == "cosine":
        return evaluator.stats(candidate).cosine
    return evaluator(candidate)  # accuracy drop in points


def _ranked(quantizer: _Quantizer, evaluator, quantized: onnx.ModelProto) -> list[tuple[str, float]]:
    """Quantized nodes by the relative error quantization adds at their output (the error of
    their output minus that of their float input, both named as in the float model: the QDQ
    model keeps those values and reads them through Quantize/DequantizeLinear), largest first."""
    from lepton_opt.passes.calibration import value_errors

    io = {n.name: (n.output[0], n.input[0]) for n in quantizer.proto.graph.node if n.name in quantizer.candidates}
    errors = value_errors(evaluator, quantizer.proto, quantized, [v for pair in io.values() for v in pair])
    order = {name: i for i, name in enumerate(quantizer.candidates)}
    ranked = []
    for name, (out, inp) in io.items():
        gain = errors.get(out, 0.0) - errors.get(inp, 0.0)
        ranked.append((name, gain if np.isfinite(gain) else 0.0))
    ranked.sort(key=lambda kv: (-kv[1], order[kv[0]]))
    return ranked


def _guard(quantizer: _Quantizer, evaluator, metric: str, budget: float, quantized: onnx.ModelProto,
           note) -> tuple[QuantizeGuard, onnx.ModelProto]:
    note("scoring the quantized model")
    first = _score(evaluator, metric, quantized)
    if meets(metric, budget, first):
        return QuantizeGuard(metric, budget, evaluator.description, first, first, [], evaluator.count), quantized
    note("ranking nodes by the error quantization adds")
    ranked = _ranked(quantizer, evaluator, quantized)
    ops = {n.name: n.op_type for n in quantizer.proto.graph.node}

    def trial(k: int):
        model = quantizer.quantize({name for name, _ in ranked[:k]})
        return model, _score(evaluator, metric, model)

    k, model, score = fewest_kept(len(ranked), trial, lambda s: meets(metric, budget, s), note,
                                  max_bisections=_MAX_GUARD_TRIALS)
    if k is None:
        if model is None:  # nothing ranked to keep in float
            model, score = quantized, first
        kept = [ExcludedNode(n, ops[n], "kept float by the accuracy guard (budget not met)") for n, _ in ranked]
        return QuantizeGuard(metric, budget, evaluator.description, first, score, kept, evaluator.count), model
    kept = [ExcludedNode(name, ops[name], f"kept float by the accuracy guard: quantizing it adds {gain:.3g} "
                                          f"relative error at its output (rank {rank + 1} of {len(ranked)})")
            for rank, (name, gain) in enumerate(ranked[:k])]
    return QuantizeGuard(metric, budget, evaluator.description, first, score, kept, evaluator.count), model
