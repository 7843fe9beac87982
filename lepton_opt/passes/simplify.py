"""Simplification passes: folding, dead code, CSE, initializer dedup, no-ops, chains.

Each pass is a named :class:`~lepton_opt.passes.base.Pass` that counts its rewrites. Library
passes are wrapped rather than rewritten: onnxscript's constant folder (with its symbolic
shape handling), and ``onnx_ir.passes.common``'s unused-node removal, CSE, initializer
deduplication and constant lifting. What the libraries lack is written here as data:

* ``NO_OPS``: op type -> which input the node's first output is identical to (Identity,
  Dropout in inference, Cast to the same type, Reshape/Expand to the same shape, identity
  Transpose, Mul by 1, Add/Sub of 0, Div by 1, Pad of zeros, whole-tensor Slice, 1-input
  Concat). Such nodes are bypassed: their users read the input directly.
* ``CHAIN_RULES``: onnxscript rewrite rules collapsing chains of Transpose, Reshape, Squeeze,
  Unsqueeze, Flatten and Cast into one node (or none).

Under fixed input shapes (``--input-shape``) ``fold-shapes`` turns ``Shape`` / ``Size`` of
static tensors and ``Reshape`` targets of known output shape into constants; ``fold-constants``
then folds the shape-computing subgraphs torch, paddle2onnx and ultralytics exports contain
(Shape -> Gather -> Concat -> Reshape, ConstantOfShape, Range, Expand) before lowering.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import Callable

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript.optimizer import _constant_folding, basic_constant_propagation
from onnxscript.rewriter import RewriteRuleSet
from onnxscript.rewriter._basics import MatchResult
from onnxscript.rewriter._rewrite_rule import RewriteRuleClassBase
from onnxscript.rewriter.rules.common import (
    cast_constant_of_shape_rule,
    cast_constant_of_shape_without_value_rule,
    reshape_reshape_rule,
    transpose_transpose_rule,
    unsqueeze_unsqueeze_rule,
)

from lepton_opt.ir.load import DECLARED_ONLY
from lepton_opt.passes.base import Pass, PassResult

_logger = logging.getLogger(__name__)


def _nodes(model: ir.Model) -> list[ir.Node]:
    return list(ir.traversal.RecursiveGraphIterator(model.graph))


def _const(value: ir.Value | None) -> np.ndarray | None:
    if value is None or value.const_value is None:
        return None
    try:
        return value.const_value.numpy()
    except Exception:  # noqa: BLE001 - external data that cannot be read is "not known"
        return None


def _int_dims(value: ir.Value) -> list[int] | None:
    """The value's shape if every dim is a known integer."""
    if value.shape is None or not all(isinstance(d, int) for d in value.shape):
        return None
    return [int(d) for d in value.shape]


def _opset(model: ir.Model) -> int:
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))


# --------------------------------------------------------------------------------- folding
class _CountingFolder(_constant_folding.FoldConstantsPass):
    """onnxscript's folder, counting the nodes it replaces; a node ``should_fold`` insists on
    (a weight, see :data:`_WEIGHT_INPUTS`) is folded past the output size limit too."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.replaced = 0

    def _prepare_folded_tensor(self, node, output_name, output_array):
        if not self.should_fold(node):
            return super()._prepare_folded_tensor(node, output_name, output_array)
        limit, self.output_size_limit = self.output_size_limit, 1 << 62
        try:
            return super()._prepare_folded_tensor(node, output_name, output_array)
        finally:
            self.output_size_limit = limit

    def replace_node(self, node, replacement, root):
        super().replace_node(node, replacement, root)
        self.replaced += 1


class FoldConstants(Pass):
    """Evaluate nodes whose inputs are all constants (onnxscript's folder, with shape inference;
    it also inlines the taken branch of an ``If`` whose condition it can evaluate)."""

    name = "fold-constants"
    description = "evaluate nodes whose inputs are constants (onnxscript's folder)"
    input_size_limit = _constant_folding.DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT
    output_size_limit = _constant_folding.DEFAULT_CONSTANT_FOLD_OUTPUT_SIZE_LIMIT

    def call(self, model: ir.Model) -> PassResult:
        folder = _CountingFolder(
            shape_inference=True,
            input_size_limit=self.input_size_limit,
            output_size_limit=self.output_size_limit,
            should_fold=self._should_fold,
        )
        # The folder's shape inference sets the type its schema infers, None where the schema
        # infers none (ai.onnx.preview.training's Gradient), over the type the model declares: a
        # graph output would then be written without a type, which onnx.checker rejects.
        types = {value: value.type for node in _nodes(model) for value in node.outputs if value.type is not None}
        folder(model)
        for value, known in types.items():
            if value.type is None:
                value.type = known
        return PassResult(model, folder.replaced > 0, folder.replaced)

    def _should_fold(self, node: ir.Node) -> bool | None:
        if _dequantizes_constant_weight(node):
            return True
        if node.domain not in ("", "ai.onnx") or node.op_type in _NOT_FOLDED:
            return None
        # onnxscript keeps every ConstantOfShape (a zeros tensor can be large); a small one is
        # usually part of a shape or padding computation (torch's F.pad export) that must fold.
        if node.op_type == "ConstantOfShape":
            shape = _const(node.inputs[0]) if node.inputs and node.inputs[0] is not None else None
            if shape is not None and int(np.prod(shape, dtype=np.int64)) <= _SMALL_CONSTANT_OF_SHAPE:
                return True
        if node.outputs and all(_feeds_weights(value) for value in node.outputs):
            return True  # whatever its size: see _WEIGHT_INPUTS
        return None


_SMALL_CONSTANT_OF_SHAPE = 1024

# Inputs that hold a model's weights. Constants computed for them (a float16 weight Cast to
# float32, a transposed or scaled weight, the ConstantOfShape weights of onnx's "light" test
# models) are folded whatever their size: computed at run time they cost every inference, and
# they hide the weight from what needs it constant (batch-norm folding, weight prepacking,
# Winograd); onnxruntime folds them when it loads a model.
_WEIGHT_INPUTS: dict[str, tuple[int, ...]] = {
    "Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (1, 2), "MatMul": (1,), "PRelu": (1,),
    "BatchNormalization": (1, 2, 3, 4), "InstanceNormalization": (1, 2), "LayerNormalization": (1, 2),
    "LSTM": (1, 2, 3), "GRU": (1, 2, 3), "RNN": (1, 2, 3), "Gather": (0,),
}
# Ops that prepare a weight on its way to one of those inputs.
_WEIGHT_PREPARATION = frozenset({
    "Cast", "Transpose", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Mul", "Div", "Add", "Sub",
    "Neg", "Sqrt", "Reciprocal", "Pow", "Concat", "Slice", "Expand", "Tile",
})


def _feeds_weights(value: ir.Value, depth: int = 0) -> bool:
    """Every use of ``value`` is a weight input, directly or through a few weight-preparing ops."""
    uses = list(value.uses())
    if not uses or value.is_graph_output():
        return False
    for use in uses:
        node = use.node
        if node.domain not in ("", "ai.onnx"):
            return False
        if use.idx in _WEIGHT_INPUTS.get(node.op_type, ()):
            continue
        if depth < 4 and node.op_type in _WEIGHT_PREPARATION and all(
                _feeds_weights(out, depth + 1) for out in node.outputs):
            continue
        return False
    return True


class FoldConstantsWithOnnxruntime(Pass):
    """What onnxscript's folder declines (multi-output ops, ops its evaluator lacks), evaluated
    by onnxruntime as onnxsim does, in every graph (``If`` branches too). A pass of its own, so
    that it still runs where the library folder is rolled back on a model."""

    name = "fold-constants-ort"
    description = "evaluate the constant subgraphs onnxscript's folder declines with onnxruntime"
    input_size_limit = FoldConstants.input_size_limit
    output_size_limit = FoldConstants.output_size_limit

    def call(self, model: ir.Model) -> PassResult:
        folded = sum(fold_with_onnxruntime(model, graph, self.input_size_limit, self.output_size_limit)
                     for graph in list(model.graphs()))
        return PassResult(model, folded > 0, folded)

# Never evaluated at compile time: random ops (a fresh draw per run) and the quantization ops
# (the int8 lowering reads the QDQ structure itself).
_NOT_FOLDED = frozenset({
    "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli",
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
})


# The element types the int8 lowering reads through DequantizeLinear (its integer kernels).
_INT8_KERNEL_TYPES = frozenset({ir.DataType.INT8, ir.DataType.UINT8})


def _dequantizes_constant_weight(node: ir.Node) -> bool:
    """A DequantizeLinear of a constant that the int8 kernels cannot take: 4-bit weights
    (onnxruntime's QDQ ``q4`` format, block-wise scales), 16-bit or float8 ones. Folded into the
    float weight it stands for, as onnxruntime does when it has no kernel for the pair."""
    if node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx") or not node.inputs:
        return False
    if not all(v is None or v.const_value is not None for v in node.inputs):
        return False
    block_size = node.attributes.get("block_size")
    return node.inputs[0].dtype not in _INT8_KERNEL_TYPES or bool(block_size is not None and block_size.value)


def fold_with_onnxruntime(model: ir.Model, graph: ir.Graph, input_size_limit: int, output_size_limit: int) -> int:
    """Evaluate with onnxruntime every node of ``graph`` whose inputs are all constants (directly
    or through other such nodes); the values the rest of the graph reads become initializers.
    Returns how many nodes were folded away."""
    constant: set[ir.Value] = set()
    members: list[ir.Node] = []
    for node in graph:
        if (node.domain not in ("", "ai.onnx")
                or (node.op_type in _NOT_FOLDED and not _dequantizes_constant_weight(node))
                or any(attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
                       for attr in node.attributes.values())):
            continue
        inputs = [v for v in node.inputs if v is not None]
        if not all(v in constant or _foldable_constant(v, input_size_limit) for v in inputs):
            continue
        if not all(o.name for o in node.outputs) or any(o.is_graph_output() for o in node.outputs):
            continue
        members.append(node)
        constant.update(node.outputs)
    if all(node.op_type == "Constant" for node in members):
        return 0  # nothing to evaluate (lift-constants makes them initializers)
    member_set = set(members)
    boundary = [o for n in members for o in n.outputs
                if any(use.node not in member_set for use in o.uses())]
    if not boundary:
        return 0
    try:
        values = _run_nodes(model, members, boundary)
    except Exception as e:  # noqa: BLE001 - onnxruntime cannot evaluate this subgraph: keep it as it is
        _logger.info("fold-constants-ort: onnxruntime could not evaluate %d constant nodes of graph %r (%s); "
                     "they stay", len(members), graph.name, str(e).splitlines()[0] if str(e) else type(e).__name__)
        return 0
    folded = 0
    for value, array in zip(boundary, values):
        if not isinstance(array, np.ndarray) or array.size > output_size_limit:
            continue
        name = value.name
        value.name = None
        constant_value = ir.Value(name=name, type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                                  shape=ir.Shape(array.shape), const_value=ir.tensor(array, name=name))
        graph.register_initializer(constant_value)
        value.replace_all_uses_with(constant_value)
        folded += 1
    if not folded:
        return 0
    removed = 0
    for node in reversed(members):  # consumers first, so a producer is free once its users are gone
        if not any(o.uses() for o in node.outputs):
            graph.remove(node, safe=True)
            removed += 1
    return removed


def _foldable_constant(value: ir.Value, input_size_limit: int) -> bool:
    tensor = value.const_value
    return (tensor is not None and not value.is_graph_input() and value.name is not None
            and tensor.size <= input_size_limit)


def _run_nodes(model: ir.Model, nodes: list[ir.Node], outputs: list[ir.Value]) -> list:
    """Run ``nodes`` (a closed subgraph over constants) in onnxruntime; the values of ``outputs``."""
    import onnx
    import onnxruntime as ort

    produced = {o for n in nodes for o in n.outputs}
    feeds_needed = {v for n in nodes for v in n.inputs if v is not None and v not in produced}
    graph = onnx.helper.make_graph(
        [ir.serde.serialize_node(n) for n in nodes], "fold",
        inputs=[],
        outputs=[onnx.ValueInfoProto(name=v.name) for v in outputs],
        initializer=[ir.serde.serialize_tensor(v.const_value) for v in feeds_needed],
    )
    for tensor, value in zip(graph.initializer, feeds_needed):
        tensor.name = value.name
    opsets = [onnx.helper.make_opsetid(domain, version) for domain, version in model.opset_imports.items()]
    proto = onnx.helper.make_model(graph, opset_imports=opsets, ir_version=max(model.ir_version or 0, 7))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run([v.name for v in outputs], {})


class FoldLargeConstants(FoldConstants):
    """Constant folding without the input-size limit: also folds ops on large weights
    (a Transpose, Cast or Mul of a weight tensor), which may make the file larger."""

    name = "fold-large-constants"
    description = "constant folding without the input-size limit (ops on whole weight tensors)"
    input_size_limit = 1 << 62


class FoldShapes(Pass):
    """Infer shapes over the whole model, then make ``Shape``/``Size`` of static tensors and the
    target of each ``Reshape`` whose output shape is known into constants."""

    name = "fold-shapes"
    description = "Shape/Size of static tensors and Reshape targets of known output shape -> constants"

    def call(self, model: ir.Model) -> PassResult:
        common_passes.ShapeInferencePass(check_type=False, strict_mode=False, data_prop=True)(model)
        rewrites = 0
        for node in _nodes(model):
            if node.domain not in ("", "ai.onnx") or node.graph is None:
                continue
            if node.op_type == "Shape":
                value = _shape_of(node)
            elif node.op_type == "Size":
                dims = _int_dims(node.inputs[0])
                value = None if dims is None else np.array(int(np.prod(dims)), np.int64)
            else:
                continue
            if value is not None and _replace_with_constant(node, value):
                rewrites += 1
        rewrites += RewriteRuleSet(RESHAPE_TARGET_RULES).apply_to_model(model)
        return PassResult(model, rewrites > 0, rewrites)


def _shape_of(node: ir.Node) -> np.ndarray | None:
    x = node.inputs[0]
    if x is None or x.shape is None:
        return None
    start = node.attributes.get_int("start", 0)
    end = node.attributes.get_int("end", None)
    dims = list(x.shape)[start:end]  # Python slicing clamps exactly as the ONNX spec does
    if not all(isinstance(d, int) for d in dims):
        return None
    return np.array(dims, np.int64)


def _replace_with_constant(node: ir.Node, array: np.ndarray) -> bool:
    """Make ``node``'s single output an initializer holding ``array``."""
    out = node.outputs[0]
    graph = node.graph
    if out.is_graph_output() or len(node.outputs) != 1:
        return False
    name = out.name
    out.name = None
    constant = ir.Value(name=name, type=ir.TensorType(ir.DataType.INT64), shape=ir.Shape(array.shape),
                        const_value=ir.tensor(array, name=name))
    graph.register_initializer(constant)
    out.replace_all_uses_with(constant)
    graph.remove(node, safe=True)
    return True


class ReshapeTargetFromOutputShape(RewriteRuleClassBase):
    """Reshape(x, computed shape) whose output shape is known -> Reshape(x, constant shape).

    Fully static output: the exact dims. One symbolic dim: -1 in its place (Reshape infers it).
    Refused for zero-sized dims (0 would mean "copy the input dim" without ``allowzero``).
    """

    def __init__(self):
        super().__init__("ReshapeTargetFromOutputShape")

    def pattern(self, op, x, shape):
        return op.Reshape(x, shape, _outputs=["out"])

    def check(self, context, x, shape, out) -> MatchResult:
        result = MatchResult()
        if _const(shape) is not None:
            return result.fail("the target shape is already a constant")
        if out.meta.get(DECLARED_ONLY):
            # an exporter's declaration that inference did not confirm: some are wrong
            return result.fail("the output's shape is only declared, not inferred")
        target = _target_from_output(out)
        if target is None:
            return result.fail("output shape unknown or has more than one symbolic dim")
        if 0 in target:
            return result.fail("a zero-sized dim would read as 'copy the input dim'")
        return result

    def rewrite(self, op, x, shape, out):
        target = _target_from_output(out)
        return op.Reshape(x, op.Constant(value=ir.tensor(np.array(target, np.int64))))


def _target_from_output(out: ir.Value) -> list[int] | None:
    if out.shape is None:
        return None
    dims = list(out.shape)
    if sum(not isinstance(d, int) for d in dims) > 1:
        return None
    return [int(d) if isinstance(d, int) else -1 for d in dims]


RESHAPE_TARGET_RULES = [ReshapeTargetFromOutputShape.rule()]


class LiftConstants(Pass):
    """Constant nodes -> initializers (onnx_ir's pass), so dedup and the lowering see them."""

    name = "lift-constants"
    description = "Constant nodes -> initializers"

    def call(self, model: ir.Model) -> PassResult:
        before = _count_op(model, "Constant")
        common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
        lifted = before - _count_op(model, "Constant")
        return PassResult(model, lifted > 0, lifted)


def _count_op(model: ir.Model, op_type: str) -> int:
    return sum(1 for n in ir.traversal.RecursiveGraphIterator(model.graph)
               if n.op_type == op_type and n.domain in ("", "ai.onnx"))


# -------------------------------------------------------------------- dead code, CSE, dedup
class RemoveDeadNodes(Pass):
    """Nodes and initializers nothing reads (onnx_ir's unused-node removal)."""

    name = "remove-dead-nodes"
    description = "remove nodes and initializers no output depends on"

    def call(self, model: ir.Model) -> PassResult:
        before = _size(model)
        common_passes.RemoveUnusedNodesPass()(model)
        common_passes.RemoveUnusedFunctionsPass()(model)
        for graph in model.graphs():  # the library pass leaves unused subgraph initializers
            for name, value in list(graph.initializers.items()):
                if not value.uses() and not value.is_graph_input() and not value.is_graph_output():
                    graph.initializers.pop(name)
        removed = before - _size(model)
        return PassResult(model, removed > 0, removed)


class EliminateCommonSubexpressions(Pass):
    """Nodes computing what an earlier node already computes (onnx_ir's CSE)."""

    name = "cse"
    description = "merge nodes with the same op, attributes and inputs"

    def call(self, model: ir.Model) -> PassResult:
        before = _size(model)
        common_passes.CommonSubexpressionEliminationPass()(model)
        merged = before - _size(model)
        return PassResult(model, merged > 0, merged)


class DeduplicateInitializers(Pass):
    """Initializers with identical dtype, shape and bytes share one tensor.

    Like onnx_ir's ``DeduplicateHashedInitializersPass``, but a tensor is hashed only when
    another one has the same dtype, shape and first 4 KB: distinct weights are told apart
    without reading them whole (seconds per round on a BERT-base). Graph inputs and outputs
    keep their own initializers.
    """

    name = "dedup-initializers"
    description = "merge initializers with identical contents"

    def call(self, model: ir.Model) -> PassResult:
        merged = 0
        for graph in model.graphs():
            groups: dict[tuple, list[tuple[ir.Value, bytes]]] = {}
            for value in graph.initializers.values():
                if value.is_graph_input() or value.is_graph_output():
                    continue
                data = _raw_bytes(value.const_value)
                if data is None:
                    continue
                key = (value.const_value.dtype, tuple(value.const_value.shape), data[:_PREFIX])
                groups.setdefault(key, []).append((value, data))
            for candidates in groups.values():
                if len(candidates) < 2:
                    continue
                kept: dict[str, ir.Value] = {}
                for value, data in candidates:
                    digest = hashlib.sha256(data).hexdigest()
                    if digest not in kept:
                        kept[digest] = value
                        continue
                    value.replace_all_uses_with(kept[digest])
                    graph.initializers.pop(value.name)
                    merged += 1
        return PassResult(model, merged > 0, merged)


_PREFIX = 4096


def _raw_bytes(tensor) -> bytes | None:
    """The tensor's contents as bytes (strings: their repr), None if unreadable."""
    if tensor is None:
        return None
    try:
        if tensor.dtype == ir.DataType.STRING:
            return repr(tensor.numpy().tolist()).encode()
        return tensor.tobytes()
    except Exception:  # noqa: BLE001 - unreadable external data: leave it alone
        return None


def _size(model: ir.Model) -> int:
    """Nodes plus initializers, over the graph and its subgraphs."""
    return sum(len(g.initializers) + sum(1 for _ in g) for g in model.graphs())


# ----------------------------------------------------------------------------- no-op removal
# Each entry: op type -> f(node, opset) giving the index of the input that the node's first
# output is identical to (same dtype, shape and values), or None when it is not a no-op.
NoOpTest = Callable[[ir.Node, int], "int | None"]

_INT64_HUGE = 1 << 62  # ends at or beyond this mean "to the end" whatever the dim


def _identity(node: ir.Node, opset: int) -> int | None:
    return 0  # y = x


def _dropout(node: ir.Node, opset: int) -> int | None:
    # Dropout outside training is the identity (opset < 7 only when is_test=1).
    if opset < 7 and node.attributes.get_int("is_test", 0) != 1:
        return None
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        training = _const(node.inputs[2])
        if training is None or bool(training):
            return None
    return 0


def _cast_same_type(node: ir.Node, opset: int) -> int | None:
    # Cast(x, to=dtype(x)) = x
    x = node.inputs[0]
    to = node.attributes.get_int("to", None)
    return 0 if x is not None and x.dtype is not None and to == x.dtype else None


def _reshape_same_shape(node: ir.Node, opset: int) -> int | None:
    # Reshape(x, s) = x when s spells x's own shape (0 copies a dim unless allowzero; one -1)
    x, target = node.inputs[0], _const(node.inputs[1]) if len(node.inputs) > 1 else None
    if x is None or x.shape is None or target is None or target.ndim != 1 or len(target) != len(x.shape):
        return None
    allowzero = node.attributes.get_int("allowzero", 0)
    if any(isinstance(d, int) and d == 0 for d in x.shape):
        return None  # -1 would be ambiguous
    inferred = 0
    for t, d in zip(target.tolist(), x.shape):
        if t == 0 and not allowzero:
            continue
        if t == -1:
            inferred += 1
            continue
        if not (isinstance(d, int) and d == t):
            return None
    return 0 if inferred <= 1 else None


def _expand_same_shape(node: ir.Node, opset: int) -> int | None:
    # Expand(x, s) = x when broadcasting x to s changes nothing (s no longer, each dim 1 or x's)
    x, target = node.inputs[0], _const(node.inputs[1])
    if x is None or target is None or target.ndim != 1:
        return None
    return 0 if _broadcast_keeps(x, target.tolist()) else None


def _broadcast_keeps(x: ir.Value, dims: list[int]) -> bool:
    """Whether broadcasting ``x`` with a tensor of shape ``dims`` leaves x's shape unchanged."""
    if not dims:
        return True  # a scalar never changes the other operand's shape
    if x.shape is None:
        return False
    rank = len(x.shape)
    if len(dims) > rank:
        return False
    for c, d in zip(reversed(dims), reversed(list(x.shape))):
        if c != 1 and not (isinstance(d, int) and d == c):
            return False
    return True


def _transpose_identity(node: ir.Node, opset: int) -> int | None:
    # Transpose(x, perm=[0, 1, ..., r-1]) = x
    perm = node.attributes.get_ints("perm", None)
    if perm is None:
        x = node.inputs[0]
        return 0 if x is not None and x.shape is not None and len(x.shape) <= 1 else None
    return 0 if list(perm) == list(range(len(perm))) else None


def _binary_with_neutral(neutral: float, commutative: bool) -> NoOpTest:
    # x op c = x when every element of c is the neutral element and c does not broadcast x larger
    def test(node: ir.Node, opset: int) -> int | None:
        if len(node.inputs) != 2 or any(v is None for v in node.inputs):
            return None
        candidates = [(0, 1), (1, 0)] if commutative else [(0, 1)]
        for keep, other in candidates:
            c = _const(node.inputs[other])
            if c is not None and c.size > 0 and np.all(c == neutral) and _broadcast_keeps(
                    node.inputs[keep], list(c.shape)) and node.inputs[keep].dtype == node.inputs[other].dtype:
                return keep
        return None

    return test


def _pad_zeros(node: ir.Node, opset: int) -> int | None:
    # Pad(x, pads=0...) = x (whatever the mode and constant value)
    pads = node.attributes.get_ints("pads", None) if opset < 11 else None
    if pads is None and len(node.inputs) > 1:
        pads = _const(node.inputs[1])
    return 0 if pads is not None and not np.any(np.asarray(pads)) else None


def _slice_whole(node: ir.Node, opset: int) -> int | None:
    # Slice(x, starts=0, ends>=dim, steps=1) on every sliced axis = x
    if opset < 10 or len(node.inputs) < 3:
        return None
    x = node.inputs[0]
    starts, ends = _const(node.inputs[1]), _const(node.inputs[2])
    axes = _const(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else None
    steps = _const(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] is not None else None
    if x is None or x.shape is None or starts is None or ends is None:
        return None
    if len(node.inputs) > 3 and node.inputs[3] is not None and axes is None:
        return None
    if len(node.inputs) > 4 and node.inputs[4] is not None and (steps is None or np.any(steps != 1)):
        return None
    rank = len(x.shape)
    axes = list(range(len(starts))) if axes is None else [a + rank if a < 0 else a for a in axes.tolist()]
    for axis, start, end in zip(axes, starts.tolist(), ends.tolist()):
        dim = x.shape[axis] if 0 <= axis < rank else None
        start_ok = start == 0 or (isinstance(dim, int) and start <= -dim)
        end_ok = end >= _INT64_HUGE or (isinstance(dim, int) and end >= dim)
        if not (start_ok and end_ok):
            return None
    return 0


def _single_input(node: ir.Node, opset: int) -> int | None:
    # Concat(x) = x
    return 0 if len(node.inputs) == 1 and node.inputs[0] is not None else None


NO_OPS: dict[str, NoOpTest] = {
    "Identity": _identity,
    "Dropout": _dropout,
    "Cast": _cast_same_type,
    "Reshape": _reshape_same_shape,
    "Expand": _expand_same_shape,
    "Transpose": _transpose_identity,
    "Mul": _binary_with_neutral(1, commutative=True),
    "Add": _binary_with_neutral(0, commutative=True),
    "Sub": _binary_with_neutral(0, commutative=False),
    "Div": _binary_with_neutral(1, commutative=False),
    "Pad": _pad_zeros,
    "Slice": _slice_whole,
    "Concat": _single_input,
}


def bypass(node: ir.Node, index: int) -> bool:
    """Make the users of ``node``'s first output read ``node.inputs[index]`` and remove the node.

    Refused when another output of the node is used, or when the output is a graph output and
    the input cannot take its name (a graph input, an initializer, another graph output, or a
    value of an enclosing graph).
    """
    x, y = node.inputs[index], node.outputs[0]
    graph = node.graph
    if x is None or graph is None or any(o.uses() or o.is_graph_output() for o in node.outputs[1:]):
        return False
    if y.is_graph_output():
        producer = x.producer()
        if (x.is_graph_input() or x.is_initializer() or x.is_graph_output() or producer is None
                or producer.graph is not graph):
            return False
        ir.convenience.replace_all_uses_with(y, x, replace_graph_outputs=True)
        name = y.name
        y.name = None
        x.name = name
    else:
        ir.convenience.replace_all_uses_with(y, x)
    if x.shape is None and y.shape is not None:
        x.shape = y.shape
    if x.type is None and y.type is not None:
        x.type = y.type
    graph.remove(node, safe=True)
    return True


class RemoveNoOps(Pass):
    """Bypass nodes whose output equals an input (see ``NO_OPS``)."""

    name = "remove-no-ops"
    description = ("Identity, inference Dropout, same-type Cast, same-shape Reshape/Expand, identity "
                   "Transpose, x*1, x+0, x-0, x/1, zero Pad, whole Slice, 1-input Concat")

    def call(self, model: ir.Model) -> PassResult:
        opset = _opset(model)
        nodes = _nodes(model)
        basic_constant_propagation(nodes)  # Constant-node outputs get their const_value
        removed = 0
        for node in nodes:
            test = NO_OPS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
            if test is None or node.graph is None:
                continue
            index = test(node, opset)
            if index is not None and bypass(node, index):
                removed += 1
        return PassResult(model, removed > 0, removed)


# ------------------------------------------------------------------------- chain collapsing
_RESHAPE_LIKE = ("Reshape", "Squeeze", "Unsqueeze", "Flatten")


class ReshapeLikeChain(RewriteRuleClassBase):
    """outer(inner(x)) for two of Reshape/Squeeze/Unsqueeze/Flatten with a static result
    -> Reshape(x, result shape): they only relabel the same elements."""

    def __init__(self, outer: str, inner: str):
        super().__init__(f"{outer}Of{inner}")
        self.outer, self.inner = outer, inner

    def pattern(self, op, x):
        mid = getattr(op, self.inner)(x, _allow_other_inputs=True)
        return getattr(op, self.outer)(mid, _allow_other_inputs=True, _outputs=["out"])

    def check(self, context, x, out) -> MatchResult:
        result = MatchResult()
        dims = _int_dims(out)
        if dims is None:
            return result.fail("the chain's output shape is not static")
        if 0 in dims:
            return result.fail("zero-sized dims need allowzero")
        return result

    def rewrite(self, op, x, out):
        return op.Reshape(x, op.Constant(value=ir.tensor(np.array(_int_dims(out), np.int64))))


class SqueezeUnsqueezeInverse(RewriteRuleClassBase):
    """Unsqueeze(Squeeze(x, a), a) = x (the squeezed dims were 1) and Squeeze(Unsqueeze(x, a), a)
    = x, for the same constant axes; works with dynamic dims."""

    def __init__(self, outer: str, inner: str):
        super().__init__(f"{outer}Of{inner}Inverse")
        self.outer, self.inner = outer, inner

    def pattern(self, op, x):
        mid = getattr(op, self.inner)(x, _allow_other_inputs=True, _outputs=["mid"])
        return getattr(op, self.outer)(mid, _allow_other_inputs=True, _outputs=["out"])

    def check(self, context, x, mid, out) -> MatchResult:
        result = MatchResult()
        squeezed = x if self.inner == "Squeeze" else out
        inner_axes, outer_axes = _axes(mid.producer(), squeezed), _axes(out.producer(), squeezed)
        if inner_axes is None or outer_axes is None or inner_axes != outer_axes:
            return result.fail("axes not constant, rank unknown, or different axes")
        return result

    def rewrite(self, op, x, mid, out):
        return op.Identity(x)


def _axes(node: ir.Node, full: ir.Value) -> list[int] | None:
    """Sorted, non-negative axes of a Squeeze/Unsqueeze relative to the rank of ``full`` (the
    tensor with the size-1 dims present)."""
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        axes = _const(node.inputs[1])
        axes = None if axes is None else axes.tolist()
    else:
        axes = node.attributes.get_ints("axes", None)
    if axes is None or full.shape is None:
        return None  # Squeeze without axes removes every 1 dim: needs the shape, refuse
    rank = len(full.shape)
    return sorted(a + rank if a < 0 else a for a in axes)


# Casting into a type that holds every value of the source type exactly loses nothing.
_EXACT_WIDENING: dict[ir.DataType, set[ir.DataType]] = {
    ir.DataType.BOOL: {ir.DataType.INT8, ir.DataType.UINT8, ir.DataType.INT16, ir.DataType.UINT16,
                       ir.DataType.INT32, ir.DataType.UINT32, ir.DataType.INT64, ir.DataType.UINT64,
                       ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.FLOAT, ir.DataType.DOUBLE},
    ir.DataType.INT8: {ir.DataType.INT16, ir.DataType.INT32, ir.DataType.INT64, ir.DataType.FLOAT16,
                       ir.DataType.BFLOAT16, ir.DataType.FLOAT, ir.DataType.DOUBLE},
    ir.DataType.UINT8: {ir.DataType.INT16, ir.DataType.UINT16, ir.DataType.INT32, ir.DataType.UINT32,
                        ir.DataType.INT64, ir.DataType.UINT64, ir.DataType.FLOAT16, ir.DataType.BFLOAT16,
                        ir.DataType.FLOAT, ir.DataType.DOUBLE},
    ir.DataType.INT16: {ir.DataType.INT32, ir.DataType.INT64, ir.DataType.FLOAT, ir.DataType.DOUBLE},
    ir.DataType.UINT16: {ir.DataType.INT32, ir.DataType.UINT32, ir.DataType.INT64, ir.DataType.UINT64,
                         ir.DataType.FLOAT, ir.DataType.DOUBLE},
    ir.DataType.INT32: {ir.DataType.INT64, ir.DataType.DOUBLE},
    ir.DataType.UINT32: {ir.DataType.INT64, ir.DataType.UINT64, ir.DataType.DOUBLE},
    ir.DataType.FLOAT16: {ir.DataType.FLOAT, ir.DataType.DOUBLE},
    ir.DataType.BFLOAT16: {ir.DataType.FLOAT, ir.DataType.DOUBLE},
    ir.DataType.FLOAT: {ir.DataType.DOUBLE},
}


class CastChain(RewriteRuleClassBase):
    """Cast(Cast(x, t1), t2) -> Cast(x, t2) when t1 holds every value of x's type exactly
    (then Identity when t2 is x's type): the middle cast changed no value."""

    def __init__(self):
        super().__init__("CastChain")

    def pattern(self, op, x):
        mid = op.Cast(x, _allow_other_attributes=True, _outputs=["mid"])
        return op.Cast(mid, _allow_other_attributes=True, _outputs=["out"])

    def check(self, context, x, mid, out) -> MatchResult:
        result = MatchResult()
        middle = mid.producer().attributes.get_int("to", None)
        if x.dtype is None or middle is None:
            return result.fail("input type unknown")
        if middle != x.dtype and ir.DataType(middle) not in _EXACT_WIDENING.get(x.dtype, set()):
            return result.fail(f"casting {x.dtype.name} to {ir.DataType(middle).name} may change values")
        return result

    def rewrite(self, op, x, mid, out):
        to = out.producer().attributes.get_int("to")
        if to == x.dtype:
            return op.Identity(x)
        return op.Cast(x, to=to)


CHAIN_RULES = [
    transpose_transpose_rule,  # Transpose(Transpose(x, p1), p2) = Transpose(x, p1∘p2), or x
    *(SqueezeUnsqueezeInverse.rule(outer, inner)
      for outer, inner in (("Unsqueeze", "Squeeze"), ("Squeeze", "Unsqueeze"))),
    *(ReshapeLikeChain.rule(outer, inner) for outer, inner in itertools.product(_RESHAPE_LIKE, repeat=2)),
    reshape_reshape_rule,  # Reshape(Reshape(x, s1), s2) = Reshape(x, s2) (dynamic dims too)
    unsqueeze_unsqueeze_rule,  # Unsqueeze(Unsqueeze(x, [a]), [b]) = Unsqueeze(x, [a, b'])
    CastChain.rule(),
    cast_constant_of_shape_rule,  # Cast(ConstantOfShape(s, v), t) = ConstantOfShape(s, cast(v))
    cast_constant_of_shape_without_value_rule,
]


class CollapseChains(Pass):
    """Collapse Transpose/Reshape/Squeeze/Unsqueeze/Flatten/Cast chains (see ``CHAIN_RULES``)."""

    name = "collapse-chains"
    description = "Transpose/Reshape/Squeeze/Unsqueeze/Flatten/Cast chains -> one node or none"

    def call(self, model: ir.Model) -> PassResult:
        existing = {n for n in _nodes(model) if n.op_type == "Identity"}
        rewrites = RewriteRuleSet(CHAIN_RULES).apply_to_model(model)
        # Chains that cancel out leave an Identity behind: bypass it now (remove-no-ops counts
        # the Identity nodes that were there before).
        for node in _nodes(model):
            if node.op_type == "Identity" and node not in existing and node.graph is not None:
                bypass(node, 0)
        return PassResult(model, rewrites > 0, rewrites)
