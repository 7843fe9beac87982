"""Mixed precision: float32 models to float16 or bfloat16, with block lists, kept IO types and an
accuracy guard that keeps the nodes responsible in float32.

Why written here: the converters users have (onnxconverter-common's and onnxruntime's
``float16.py``) work on protobufs with hard-coded op lists, clamp out-of-range weights silently,
know no bfloat16 and have no accuracy guard; onnxruntime's automatic mixed precision needs a GPU.
This module works on onnx-ir and decides per node from the ONNX schema of the model's opset.

How a model is converted (:func:`convert_precision`):

1. **Plan** (:func:`plan_precision`). Every node of the main graph that computes in float32 is
   *converted*, unless its op is in the block list (:data:`DEFAULT_OP_BLOCK_LIST` plus
   ``op_block_list``), its name is in ``node_block_list``, its schema at the model's opset has
   no float16/bfloat16 form, it holds a subgraph, its output is read inside a subgraph, or a
   weight it reads does not fit the type (a value beyond float16's 65504, or a small constant
   such as an epsilon that would round to zero). Every kept node comes with the reason.
   A type parameter that only reaches the node's inputs (``Shape``'s, ``Cast``'s source)
   accepts either type and costs no Cast; ``Cast`` itself is never converted.
2. **Apply**. Converted nodes' float outputs become the low type. One Cast is inserted per
   value and direction, shared by all consumers; a value produced by ``Cast(x, to=FLOAT)`` is
   cast from ``x`` directly (or ``x`` is used when it already has the type), so no
   Cast -> Cast chain is created. Weights are converted once (a float32 copy stays only when a
   kept node also reads them). With ``keep_io_types`` (default) graph inputs and outputs stay
   float32; otherwise they take the low type.
3. **Guard** (``max_error`` or ``min_cosine``). On calibration inputs (``data``, else seeded
   inputs with a warning), onnxruntime runs the float32 model with every intermediate exposed:
   a converted node whose output or input exceeds float16's range is kept in float32. Then an
   *emulation* of the plan (the float32 graph with each low-precision value rounded through a
   Cast pair: float32 compute, low-precision storage, which is how the lowering computes too)
   is scored against float32. If it misses the budget, each converted node is ranked by the
   error it adds at its output (its output error minus its inputs'), and the top 1, 2, 4, ...
   are kept in float32, then bisected to the fewest that meet the budget.

The result is a standard ONNX model (no custom domains); onnxruntime runs float16 models on CPU
(it computes ops without a float16 kernel in float32 itself). Its CPU provider has almost no
bfloat16 kernels, so bfloat16 models are checked on the emulation and run with lepton-opt's
build.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir

from lepton_opt.errors import OptionError
from lepton_opt.passes.budget import fewest_kept, meets
from lepton_opt.passes.calibration import Evaluator, value_errors, value_peaks

logger = logging.getLogger(__name__)

PRECISIONS: dict[str, ir.DataType] = {"fp16": ir.DataType.FLOAT16, "bf16": ir.DataType.BFLOAT16}
_NUMPY = {"fp16": np.float16, "bf16": ml_dtypes.bfloat16}
_ONNX_TYPE = {"fp16": "tensor(float16)", "bf16": "tensor(bfloat16)"}
_TYPE_NAME = {"fp16": "float16", "bf16": "bfloat16"}
BF16_OPSET = 22
# Nodes the guard tries to give back to the low type after its search (one scoring each).
_MAX_GIVE_BACK = 32
# Small constants (epsilons, scalars) whose non-zero values would round to zero: keep them.
_SMALL_CONSTANT = 16

# Ops kept in float32 by default, and why. Each is a place where low-precision storage or a
# low-precision result changes the answer in practice, not merely its last digits.
DEFAULT_OP_BLOCK_LIST: dict[str, str] = {
    "Exp": "exp overflows float16 above 11",
    "Log": "log's inputs near zero lose their meaning in low precision",
    "Pow": "powers leave float16's range quickly",
    "Reciprocal": "1/x of small values leaves float16's range",
    "ReduceSum": "sums of many values leave float16's range",
    "ReduceSumSquare": "sums of squares leave float16's range",
    "ReduceL1": "sums of many values leave float16's range",
    "ReduceL2": "sums of squares leave float16's range",
    "ReduceLogSum": "sums of many values leave float16's range",
    "ReduceLogSumExp": "exp and sums leave float16's range",
    "ReduceProd": "products leave float16's range",
    "CumSum": "running sums leave float16's range",
    "Range": "low-precision ranges skip integers beyond 2048 (float16) or 256 (bfloat16)",
    "RandomNormal": "its dtype attribute fixes the output type",
    "RandomNormalLike": "random sampling stays in float32",
    "RandomUniform": "its dtype attribute fixes the output type",
    "RandomUniformLike": "random sampling stays in float32",
    "Bernoulli": "random sampling stays in float32",
    "Multinomial": "random sampling stays in float32",
    "EyeLike": "its dtype attribute fixes the output type",
    "NonMaxSuppression": "box coordinates and scores compared in low precision change the kept boxes",
    "RoiAlign": "box coordinates lose precision",
}


@dataclasses.dataclass
class _Binding:
    """How one node's float32 values map to the low type when it is converted."""

    lowered_in: list[int]  # input indices that take the low type
    lowered_out: list[int]  # output indices that become the low type
    either: list[int]  # input indices that accept float32 or the low type (pass-through)
    refusal: str | None = None  # why the node cannot be converted


@dataclasses.dataclass
class KeptNode:
    """A node left in float32, and why."""

    name: str
    op_type: str
    reason: str


@dataclasses.dataclass
class PrecisionPlan:
    """Which nodes run in the low type. ``kept`` lists the float32-computing nodes that stay in
    float32, with reasons; ``converted`` holds the names of the converted nodes."""

    precision: str
    converted: set[str]
    kept: dict[str, KeptNode]
    warnings: list[str] = dataclasses.field(default_factory=list)
    # node name -> how its float32 values map to the low type (from the schema, computed once)
    bindings: dict[str, _Binding] = dataclasses.field(default_factory=dict, repr=False)

    def binding(self, node: ir.Node, opset: int) -> _Binding:
        if node.name not in self.bindings:
            self.bindings[node.name] = _binding(node, opset, self.precision)
        return self.bindings[node.name]


@dataclasses.dataclass
class GuardReport:
    """What the accuracy guard did: the budget, the data, the score before and after, the nodes it
    kept in float32 (also in the plan's ``kept``), and how many candidate models it scored."""

    metric: str  # "max_error" (largest error / largest reference value) or "cosine" (smallest)
    budget: float
    data: str
    naive: float
    final: float
    kept: list[KeptNode]
    evaluations: int


@dataclasses.dataclass
class PrecisionResult:
    """A converted model (an ``ir.Model``), what was kept in float32 and why, and counts."""

    model: ir.Model
    plan: PrecisionPlan
    casts: int
    weights_converted: int
    weights_kept: list[str]
    guard: GuardReport | None
    ops_before: dict[str, int]
    ops_after: dict[str, int]
    # The float32 model the plan was made for (nodes named, opset raised for bfloat16): with
    # ``apply_plan(planned, plan, emulate=True)`` it gives the emulation the guard scores.
    planned: ir.Model | None = dataclasses.field(default=None, repr=False)

    @property
    def warnings(self) -> list[str]:
        return self.plan.warnings


# ----------------------------------------------------------------------------------------
# Planning
# ----------------------------------------------------------------------------------------

def _schema(node: ir.Node, opset: int):
    try:
        return onnx.defs.get_schema(node.op_type, opset, node.domain or "")
    except onnx.defs.SchemaError:
        return None


def _formal(params, index: int):
    if index < len(params):
        return params[index]
    if params and params[-1].option == onnx.defs.OpSchema.FormalParameterOption.Variadic:
        return params[-1]
    return None


def _binding(node: ir.Node, opset: int, precision: str) -> _Binding:
    """How ``node``'s float32 inputs and outputs would take the low type."""
    schema = _schema(node, opset)
    if schema is None:
        return _Binding([], [], [], f"no ONNX schema for {node.domain or 'ai.onnx'}.{node.op_type} at opset {opset}")
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    low = _ONNX_TYPE[precision]

    def param(formal) -> str | None:
        return formal.type_str if formal is not None and formal.type_str in allowed else None

    in_params = [param(_formal(schema.inputs, i)) for i in range(len(node.inputs))]
    out_params = [param(_formal(schema.outputs, i)) for i in range(len(node.outputs))]
    float_params = {p for p, v in zip(in_params, node.inputs)
                    if p is not None and v is not None and v.dtype == ir.DataType.FLOAT}
    computing = float_params & set(out_params)
    lowered_in, lowered_out, either = [], [], []
    for i, (p, v) in enumerate(zip(in_params, node.inputs)):
        if v is None or v.dtype != ir.DataType.FLOAT:
            continue
        if p in computing:
            lowered_in.append(i)
        elif p is not None and low in allowed[p]:
            either.append(i)
    for i, (p, v) in enumerate(zip(out_params, node.outputs)):
        if p in computing and v.dtype in (ir.DataType.FLOAT, None):
            lowered_out.append(i)
    refusal = None
    missing = sorted(p for p in computing if low not in allowed[p])
    if missing:
        refusal = (f"ONNX {node.op_type} at opset {opset} has no {_TYPE_NAME[precision]} form "
                   f"(type {missing[0]}: {', '.join(sorted(t[7:-1] for t in allowed[missing[0]]))})")
    elif computing and any(v.dtype == ir.DataType.FLOAT for i, v in enumerate(node.outputs)
                           if i not in lowered_out and v is not None):
        refusal = f"{node.op_type} has a float32 output of a fixed type"
    return _Binding(lowered_in, lowered_out, either, refusal)


def name_nodes(graph: ir.Graph) -> None:
    """Give every node a unique name (reports and block lists refer to nodes by name)."""
    seen: set[str] = set()
    for i, node in enumerate(graph):
        if not node.name or node.name in seen:
            base = node.name or f"{node.op_type}_{i}"
            name, k = base, 1
            while name in seen:
                name, k = f"{base}_{k}", k + 1
            node.name = name
        seen.add(node.name)


def _captured_by_subgraphs(graph: ir.Graph) -> set[ir.Value]:
    """Main-graph values read inside subgraphs (they cannot change type under the subgraph)."""
    captured: set[ir.Value] = set()
    for node in ir.traversal.RecursiveGraphIterator(graph):
        if node.graph is graph:
            continue
        for v in node.inputs:
            if v is not None and (v.graph is graph or (v.producer() is not None and v.producer().graph is graph)):
                captured.add(v)
    return captured


def _max(precision: str) -> float:
    """The largest finite value of the low type (larger values round to infinity)."""
    return float(ml_dtypes.finfo(_NUMPY[precision]).max)


def _weight_problem(value: ir.Value, precision: str) -> str | None:
    """Why the constant ``value`` cannot take the low type, or None."""
    array = value.const_value.numpy()
    finite = array[np.isfinite(array)]
    if finite.size == 0:
        return None
    peak = float(np.abs(finite).max())
    if peak > _max(precision):
        return f"weight {value.name!r} holds {peak:.3g}, beyond {_TYPE_NAME[precision]}'s range ({_max(precision):.5g})"
    if array.size <= _SMALL_CONSTANT:
        rounded = finite.astype(_NUMPY[precision])
        if ((rounded == 0) & (finite != 0)).any():
            tiny = float(np.abs(finite[(rounded == 0) & (finite != 0)]).min())
            return f"constant {value.name!r} holds {tiny:.3g}, which rounds to 0 in {_TYPE_NAME[precision]}"
    return None


def plan_precision(model: ir.Model, precision: str = "fp16", *, op_block_list: Iterable[str] | None = None,
                   node_block_list: Iterable[str] | None = None, use_default_block_list: bool = True) -> PrecisionPlan:
    """Decide per node of ``model`` (named in place where nameless) whether it runs in ``precision``."""
    if precision not in PRECISIONS:
        raise OptionError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    graph = model.graph
    name_nodes(graph)
    opset = model.opset_imports.get("", 1)
    blocked_ops = dict(DEFAULT_OP_BLOCK_LIST) if use_default_block_list else {}
    for op in op_block_list or ():
        blocked_ops[op] = "in --op-block-list"
    blocked_nodes = set(node_block_list or ())
    unknown = blocked_nodes - {n.name for n in graph}
    if unknown:
        raise OptionError(f"--node-block-list names no node of the graph: {', '.join(sorted(unknown))}")
    captured = _captured_by_subgraphs(graph)
    plan = PrecisionPlan(precision, set(), {})
    weight_warned: set[str] = set()
    for node in graph:
        binding = plan.binding(node, opset)
        if not binding.lowered_in and not binding.lowered_out:
            continue  # computes nothing in float32 (shape ops, Cast, integer ops)

        def keep(reason: str) -> None:
            plan.kept[node.name] = KeptNode(node.name, node.op_type, reason)

        if node.name in blocked_nodes:
            keep("in --node-block-list")
        elif node.op_type in blocked_ops and node.domain in ("", "ai.onnx"):
            keep(f"{node.op_type} is in the block list: {blocked_ops[node.op_type]}")
        elif node.domain not in ("", "ai.onnx"):
            keep(f"custom-domain op {node.domain}.{node.op_type}")
        elif any(isinstance(a.value, (ir.Graph, list)) and a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
                 for a in node.attributes.values()):
            keep("holds a subgraph")
        elif binding.refusal:
            keep(binding.refusal)
        elif any(v in captured for v in node.outputs):
            keep("its output is read inside a subgraph")
        else:
            weight, problem = next(((node.inputs[i], p) for i in binding.lowered_in
                                    if node.inputs[i].const_value is not None
                                    for p in [_weight_problem(node.inputs[i], precision)] if p), (None, None))
            if problem:
                keep(problem)
                if weight.name not in weight_warned:
                    weight_warned.add(weight.name)
                    plan.warnings.append(f"{problem}: kept in float32 with the nodes that read it")
            else:
                plan.converted.add(node.name)
    return plan


# ----------------------------------------------------------------------------------------
# Applying a plan: the converted model, or its float32 emulation
# ----------------------------------------------------------------------------------------

class _Rewriter:
    """Applies a plan to ``model`` in place. ``emulate`` keeps every value float32 and rounds
    the would-be low-precision values through a Cast pair instead (for scoring)."""

    def __init__(self, model: ir.Model, plan: PrecisionPlan, keep_io_types: bool, emulate: bool):
        self.model, self.graph, self.plan = model, model.graph, plan
        self.low = PRECISIONS[plan.precision]
        self.keep_io_types, self.emulate = keep_io_types, emulate
        self.opset = model.opset_imports.get("", 1)
        self.casts = 0
        self.low_weights: dict[ir.Value, ir.Value] = {}
        self.cast_cache: dict[tuple[ir.Value, ir.DataType], ir.Value] = {}
        self.low_values: set[ir.Value] = set()  # values holding the low type (or rounded, when emulating)

    def run(self) -> None:
        graph = self.graph
        # Bindings from the original types, before any value changes type.
        self.bindings = {node: self.plan.binding(node, self.opset) for node in graph}
        if not self.keep_io_types and not self.emulate:
            for v in graph.inputs:
                if v.dtype == ir.DataType.FLOAT and not v.is_initializer():
                    v.dtype = self.low
                    self.low_values.add(v)
        for node in list(graph):
            converted = node.name in self.plan.converted
            binding = self.bindings[node]
            for i, v in enumerate(node.inputs):
                if v is None:
                    continue
                if converted and i in binding.lowered_in:
                    node.replace_input_with(i, self._as_low(v, node))
                elif v in self.low_values and not self.emulate and not self._accepts_low(node, i):
                    node.replace_input_with(i, self._cast(v, ir.DataType.FLOAT, node))
            if converted:
                for i in binding.lowered_out:
                    self._lower_output(node, node.outputs[i])
        self._fix_outputs()
        for v in list(graph.initializers.values()):
            if not v.uses() and v not in graph.outputs:
                graph.initializers.pop(v.name)
        ir.passes.common.RemoveUnusedNodesPass()(self.model)

    def _accepts_low(self, node: ir.Node, index: int) -> bool:
        """Whether ``node`` may read a low-type value at input ``index`` as it is: converted nodes
        at every float input, others where the type only passes through (Shape, Cast's source)."""
        binding = self.bindings[node]
        return index in binding.either or (node.name in self.plan.converted and index in binding.lowered_in)

    def _lower_output(self, node: ir.Node, v: ir.Value) -> None:
        if not self.emulate:
            v.dtype = self.low
            self.low_values.add(v)
            return
        # node -> v (renamed, float32) -> Cast(low) -> Cast(float32) -> v's name and consumers
        uses = list(v.uses())
        name = v.name
        v.name = f"{name}__{self.plan.precision}_raw"
        down, up = self._round_trip_nodes(v, f"{name}__to_{self.plan.precision}", name)
        self.graph.insert_after(node, [down, up])
        for use in uses:
            use.node.replace_input_with(use.idx, up.outputs[0])
        for i, out in enumerate(self.graph.outputs):
            if out is v:
                self.graph.outputs[i] = up.outputs[0]
        self.low_values.add(up.outputs[0])

    def _round_trip_nodes(self, v: ir.Value, mid_name: str, out_name: str) -> tuple[ir.Node, ir.Node]:
        down = ir.Node("", "Cast", [v], [ir.AttrInt64("to", self.low)], name=f"{mid_name}__cast")
        up = ir.Node("", "Cast", down.outputs, [ir.AttrInt64("to", ir.DataType.FLOAT)], name=f"{out_name}__cast")
        down.outputs[0].name, down.outputs[0].dtype, down.outputs[0].shape = mid_name, self.low, v.shape
        up.outputs[0].name, up.outputs[0].dtype, up.outputs[0].shape = out_name, ir.DataType.FLOAT, v.shape
        return down, up

    def _as_low(self, v: ir.Value, consumer: ir.Node) -> ir.Value:
        """``v`` in the low type for a converted consumer (rounded, when emulating)."""
        if v in self.low_values:
            return v
        if v.const_value is not None and v.is_initializer():
            return self._low_weight(v)
        producer = v.producer()
        if (not self.emulate and producer is not None and producer.op_type == "Cast"
                and producer.domain in ("", "ai.onnx") and producer.inputs[0] is not None):
            source = producer.inputs[0]
            if source.dtype == self.low:
                return source
            if source.dtype is not None and source.dtype != ir.DataType.FLOAT:
                return self._cast(source, self.low, consumer)
        if self.emulate:
            key = (v, self.low)
            if key not in self.cast_cache:
                down, up = self._round_trip_nodes(v, f"{v.name}__to_{self.plan.precision}",
                                                  f"{v.name}__rounded_{self.plan.precision}")
                self._insert_after_value(v, [down, up], consumer)
                self.cast_cache[key] = up.outputs[0]
                self.low_values.add(up.outputs[0])
            return self.cast_cache[key]
        return self._cast(v, self.low, consumer)

    def _cast(self, v: ir.Value, to: ir.DataType, consumer: ir.Node) -> ir.Value:
        key = (v, to)
        if key not in self.cast_cache:
            suffix = {ir.DataType.FLOAT: "fp32", self.low: self.plan.precision}.get(to, to.name.lower())
            cast = ir.Node("", "Cast", [v], [ir.AttrInt64("to", to)], name=f"{v.name}__cast_{suffix}")
            out = cast.outputs[0]
            out.name, out.dtype, out.shape = f"{v.name}__{suffix}", to, v.shape
            self._insert_after_value(v, [cast], consumer)
            self.cast_cache[key] = out
            self.casts += 1
            if to == self.low:
                self.low_values.add(out)
        return self.cast_cache[key]

    def _insert_after_value(self, v: ir.Value, nodes: list[ir.Node], consumer: ir.Node) -> None:
        producer = v.producer()
        if producer is not None and producer.graph is self.graph:
            self.graph.insert_after(producer, nodes)
        else:
            self.graph.insert_before(consumer, nodes)

    def _low_weight(self, v: ir.Value) -> ir.Value:
        if v not in self.low_weights:
            array = v.const_value.numpy()
            rounded = array.astype(_NUMPY[self.plan.precision])
            if self.emulate:
                name = f"{v.name}__rounded_{self.plan.precision}"
                value = ir.Value(name=name, shape=v.shape, type=ir.TensorType(ir.DataType.FLOAT),
                                 const_value=ir.tensor(rounded.astype(np.float32), name=name))
            else:
                name = f"{v.name}__{self.plan.precision}"
                value = ir.Value(name=name, shape=v.shape, type=ir.TensorType(self.low),
                                 const_value=ir.tensor(rounded, dtype=self.low, name=name))
            self.graph.register_initializer(value)
            self.low_weights[v] = value
            self.low_values.add(value)
        return self.low_weights[v]

    def _fix_outputs(self) -> None:
        """Graph outputs keep float32 (``keep_io_types``) or all take the low type."""
        if self.emulate:
            return
        for i, v in enumerate(list(self.graph.outputs)):
            if v in self.low_values and self.keep_io_types:
                self._cast_output(i, v, ir.DataType.FLOAT, "fp32")
            elif v not in self.low_values and not self.keep_io_types and v.dtype == ir.DataType.FLOAT:
                self._cast_output(i, v, self.low, self.plan.precision)

    def _cast_output(self, index: int, v: ir.Value, to: ir.DataType, suffix: str) -> None:
        """Graph output ``index`` becomes ``Cast(v, to)`` under ``v``'s name (``v`` is renamed)."""
        name = v.name
        v.name = f"{name}__{self.plan.precision if to == ir.DataType.FLOAT else 'fp32'}"
        cast = ir.Node("", "Cast", [v], [ir.AttrInt64("to", to)], name=f"{name}__cast_{suffix}")
        out = cast.outputs[0]
        out.name, out.dtype, out.shape = name, to, v.shape
        if v.producer() is not None:
            self.graph.insert_after(v.producer(), cast)
        else:
            self.graph.append(cast)
        self.graph.outputs[index] = out
        self.casts += 1


def _infer_types(model: ir.Model) -> None:
    """Fill in value types where the model leaves them out: planning needs every value's type."""
    try:
        ir.passes.common.ShapeInferencePass()(model)
    except Exception as e:  # noqa: BLE001 - values without a type are then left in float32
        logger.debug("shape inference failed: %s", e)


def apply_plan(model: ir.Model, plan: PrecisionPlan, *, keep_io_types: bool = True,
               emulate: bool = False) -> tuple[ir.Model, int, int, list[str]]:
    """A copy of ``model`` with ``plan`` applied (or its float32 emulation); also returns the
    number of Casts inserted, of weights converted, and the names of float32 weights left."""
    copy = ir.serde.deserialize_model(ir.serde.serialize_model(model))
    rewriter = _Rewriter(copy, plan, keep_io_types, emulate)
    rewriter.run()
    kept = sorted(v.name for v in copy.graph.initializers.values() if v.dtype == ir.DataType.FLOAT)
    return copy, rewriter.casts, len(rewriter.low_weights), kept


# ----------------------------------------------------------------------------------------
# The accuracy guard
# ----------------------------------------------------------------------------------------

class _Guard:
    def __init__(self, model: ir.Model, plan: PrecisionPlan, keep_io_types: bool, evaluator, metric: str,
                 budget: float):
        self.model, self.plan, self.keep_io_types = model, plan, keep_io_types
        self.evaluator, self.metric, self.budget = evaluator, metric, budget
        self.base = evaluator.base

    def score(self, plan: PrecisionPlan) -> float:
        emulated, *_ = apply_plan(self.model, plan, keep_io_types=self.keep_io_types, emulate=True)
        stats = self.evaluator.stats(ir.serde.serialize_model(emulated))
        return stats.max_rel if self.metric == "max_error" else stats.cosine

    def ok(self, score: float) -> bool:
        return meets(self.metric, self.budget, score)

    def _nodes(self) -> dict[str, ir.Node]:
        return {n.name: n for n in self.model.graph}

    def _converted_values(self, nodes: dict[str, ir.Node]) -> dict[str, tuple[list[str], list[str]]]:
        """Per converted node, the names of its low-type outputs and of its non-constant low-type
        inputs (weights were checked when planning)."""
        opset = self.model.opset_imports.get("", 1)
        io = {}
        for name in self.plan.converted:
            node = nodes[name]
            binding = self.plan.binding(node, opset)
            io[name] = ([node.outputs[i].name for i in binding.lowered_out],
                        [node.inputs[i].name for i in binding.lowered_in if node.inputs[i].const_value is None])
        return io

    def keep_out_of_range(self) -> list[KeptNode]:
        """Keep converted nodes whose float values exceed the low type's range on the calibration data."""
        limit = _max(self.plan.precision)
        nodes = self._nodes()
        values: dict[str, list[str]] = {}
        for name, (outs, ins) in self._converted_values(nodes).items():
            for value in outs + ins:
                values.setdefault(value, []).append(name)
        peaks = value_peaks(self.evaluator, self.base, list(values))
        kept: list[KeptNode] = []
        for value, peak in sorted(peaks.items(), key=lambda kv: -kv[1]):
            if peak <= limit:
                continue
            for name in values[value]:
                if name in self.plan.converted:
                    node = nodes[name]
                    where = "output" if any(o.name == value for o in node.outputs) else "input"
                    reason = (f"its {where} {value!r} reaches {peak:.3g} on the calibration data, beyond "
                              f"{_TYPE_NAME[self.plan.precision]}'s range ({limit:.5g})")
                    kept.append(self._keep(self.plan, node, reason))
        return kept

    def _keep(self, plan: PrecisionPlan, node: ir.Node, reason: str) -> KeptNode:
        plan.converted.discard(node.name)
        kept = KeptNode(node.name, node.op_type, reason)
        plan.kept[node.name] = kept
        return kept

    def ranked(self) -> list[tuple[str, float]]:
        """Converted nodes by the relative error they add at their output, largest first."""
        emulated, *_ = apply_plan(self.model, self.plan, keep_io_types=self.keep_io_types, emulate=True)
        io = self._converted_values(self._nodes())
        names = [value for outs, ins in io.values() for value in outs + ins]
        errors = value_errors(self.evaluator, self.base, ir.serde.serialize_model(emulated), names)
        added = []
        order = {n.name: i for i, n in enumerate(self.model.graph)}
        for name, (outs, ins) in io.items():
            out_err = max((errors.get(o, 0.0) for o in outs), default=0.0)
            in_err = max((errors.get(i, 0.0) for i in ins), default=0.0)
            gain = out_err - in_err if np.isfinite(in_err) else 0.0
            added.append((name, 0.0 if np.isnan(gain) else gain))
        added.sort(key=lambda kv: (-kv[1], order[kv[0]]))
        return [kv for kv in added if kv[1] > 0]

    def run(self, progress: Callable[[str], None] | None = None) -> tuple[float, float, list[KeptNode]]:
        note = progress or (lambda _msg: None)
        note("scoring the naive conversion")
        naive = self.score(self.plan)
        kept = []
        if self.ok(naive):
            return naive, naive, kept
        note("checking value ranges")
        kept += self.keep_out_of_range()
        current = self.score(self.plan) if kept else naive
        if self.ok(current):
            return naive, current, kept
        note("ranking nodes by the error they add")
        ranked = self.ranked()
        nodes = self._nodes()

        def trial(k: int) -> tuple[tuple[PrecisionPlan, list[KeptNode]], float]:
            plan = dataclasses.replace(self.plan, converted=set(self.plan.converted), kept=dict(self.plan.kept))
            added = [self._keep(plan, nodes[name], f"adds {gain:.3g} relative error at its output "
                                                     f"(rank {rank + 1} of {len(ranked)})")
                     for rank, (name, gain) in enumerate(ranked[:k])]
            return (plan, added), self.score(plan)

        order_of = {name: rank for rank, (name, _gain) in enumerate(ranked)}
        k, found, score = fewest_kept(len(ranked), trial, self.ok, note, where="in float32")
        if k is None:
            return naive, current, kept  # the caller reports the miss
        plan, added = found
        # The ranking is local (a node whose rounding only hurts after a later cancellation
        # ranks low): give back, least blamed first, every kept node the budget does not need.
        for node in sorted(added, key=lambda k: -order_of[k.name])[:_MAX_GIVE_BACK]:
            note(f"trying {node.name} in {_TYPE_NAME[self.plan.precision]} again")
            trial_plan = dataclasses.replace(plan, converted=plan.converted | {node.name},
                                             kept={k: v for k, v in plan.kept.items() if k != node.name})
            trial_score = self.score(trial_plan)
            if self.ok(trial_score):
                plan, score = trial_plan, trial_score
                added = [k for k in added if k.name != node.name]
        self.plan.converted, self.plan.kept = plan.converted, plan.kept
        return naive, score, kept + added


# ----------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------

def convert_precision(
    model,
    precision: str = "fp16",
    *,
    keep_io_types: bool = True,
    op_block_list: Iterable[str] | None = None,
    node_block_list: Iterable[str] | None = None,
    use_default_block_list: bool = True,
    max_error: float | None = None,
    min_cosine: float | None = None,
    data=None,
    samples: int = 8,
    seed: int = 0,
    input_shapes=None,
    progress: Callable[[str], None] | None = None,
) -> PrecisionResult:
    """Convert ``model`` (a path, bytes, ``onnx.ModelProto`` or ``ir.Model``; never modified) to
    ``precision`` ("fp16" or "bf16"). See the module docstring. With ``max_error`` (largest
    output error over the largest reference value) or ``min_cosine``, the accuracy guard keeps
    the responsible nodes in float32 until the budget holds on ``data`` (an ``.npz`` or mapping of
    input arrays, samples on axis 0), else on ``samples`` seeded batches (with a warning)."""
    from lepton_opt.ir.load import load_model
    from lepton_opt.passes.base import op_histogram

    if precision not in PRECISIONS:
        raise OptionError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if max_error is not None and min_cosine is not None:
        raise OptionError("give one budget: --max-error or --min-cosine")
    if max_error is not None and not max_error > 0:
        raise OptionError(f"--max-error must be positive, got {max_error}")
    if min_cosine is not None and not -1.0 <= min_cosine <= 1.0:
        raise OptionError(f"--min-cosine must be in [-1, 1], got {min_cosine}")
    if data is not None and max_error is None and min_cosine is None:
        raise OptionError("--data is the accuracy guard's calibration data: give --max-error or --min-cosine")
    loaded = load_model(model, input_shapes)
    source = loaded.source
    ir_model = loaded.model
    _infer_types(ir_model)
    opset = ir_model.opset_imports.get("", 1)
    raised = None
    if precision == "bf16" and opset < BF16_OPSET:
        # Conv, pooling and most element-wise ops gained bfloat16 at opset 22.
        import onnxscript.version_converter

        converter_log = logging.getLogger("onnxscript.version_converter")
        level = converter_log.level
        converter_log.setLevel(logging.ERROR)  # it announces its fallback to onnx's converter
        try:
            onnxscript.version_converter.convert_version(ir_model, BF16_OPSET, fallback=True)
        finally:
            converter_log.setLevel(level)
        if ir_model.opset_imports.get("", 1) == BF16_OPSET:
            raised = (opset, BF16_OPSET)
    plan = plan_precision(ir_model, precision, op_block_list=op_block_list, node_block_list=node_block_list,
                          use_default_block_list=use_default_block_list)
    if raised:
        plan.warnings.append(f"opset raised from {raised[0]} to {raised[1]}: Conv, pooling and most element-wise "
                             "ops take bfloat16 only from opset 22")
    guard = None
    if max_error is not None or min_cosine is not None:
        metric, budget = ("max_error", max_error) if max_error is not None else ("cosine", min_cosine)
        base = ir.serde.serialize_model(ir_model)
        evaluator = Evaluator(base, data, None, samples, seed, source)
        if evaluator.seeded:
            plan.warnings.append(f"no --data: the accuracy guard measures on {evaluator.description}; "
                                 "activation ranges of real inputs may differ")
        naive, final, kept = _Guard(ir_model, plan, keep_io_types, evaluator, metric, budget).run(progress)
        guard = GuardReport(metric, budget, evaluator.description, naive, final, kept, evaluator.count)
        if not meets(metric, budget, final):
            plan.warnings.append(f"the accuracy budget is not met: {metric} {final:.4g} against {budget:g}")
    converted, casts, weights, weights_kept = apply_plan(ir_model, plan, keep_io_types=keep_io_types)
    return PrecisionResult(converted, plan, casts, weights, weights_kept, guard,
                           dict(op_histogram(ir_model)), dict(op_histogram(converted)), ir_model)
