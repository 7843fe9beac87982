"""Raising a model's ai.onnx opset so that a fused op (``Gelu``: 20, ``Attention``: 23) is legal.

A fusion may need a newer opset than the model imports. Raising the import is only sound when
every other node keeps its meaning under the newer version of its op. Most version bumps
between opsets 13 and 24 only add types or add attributes whose defaults keep the old
behaviour; the ones that do not are listed in :data:`BREAKING` (read from the ONNX operator
changelog). A node hit by one of them is either converted (:data:`CONVERTERS`: ``ReduceMean``
and friends moved ``axes`` from an attribute to an input in opset 18) or makes the raise
impossible, and the fusion refuses with that reason.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import onnx
import onnx.defs
import onnx_ir as ir

DEFAULT_DOMAINS = ("", "ai.onnx")

# (op type, version that changed its meaning) -> why. A node of this op at an older opset
# cannot be carried over the version unless CONVERTIBLE has an entry for the same key.
_AXES_INPUT_13 = ("Squeeze", "Unsqueeze", "ReduceSum")
_AXES_INPUT_18 = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
                  "ReduceMin", "ReduceProd", "ReduceSumSquare")
_SOFTMAX_FAMILY = ("Softmax", "LogSoftmax", "Hardmax")
BREAKING: dict[tuple[str, int], str] = {
    **{(op, 13): "moved 'axes' from an attribute to an input" for op in _AXES_INPUT_13},
    **{(op, 18): "moved 'axes' from an attribute to an input" for op in _AXES_INPUT_18},
    ("Split", 13): "moved 'split' from an attribute to an input",
    ("Split", 18): "needs 'num_outputs' when 'split' is not given",
    **{(op, 13): "now normalizes one axis (default -1) instead of a flattened 2-D view from 'axis' (default 1)"
       for op in _SOFTMAX_FAMILY},
    ("Pad", 11): "moved 'pads' and 'value' from attributes to inputs",
    ("Clip", 11): "moved 'min' and 'max' from attributes to inputs",
    ("Slice", 10): "moved 'starts', 'ends' and 'axes' from attributes to inputs",
    ("TopK", 10): "moved 'k' from an attribute to an input",
    ("Dropout", 12): "moved 'ratio' from an attribute to an input",
    ("Resize", 11): "changed its coordinate transformation",
    ("BatchNormalization", 9): "dropped the 'spatial' attribute",
    ("RoiAlign", 16): "changed the default coordinate_transformation_mode",
    ("GridSample", 20): "renamed its interpolation modes",
    ("DFT", 20): "moved 'axis' from an attribute to an input",
    ("GroupNormalization", 21): "changed scale and bias from per-group to per-channel",
    ("BatchNormalization", 14): "changed the meaning of the training-mode outputs",
}


def _attribute_to_input(attribute: str, index: int) -> Callable[[ir.Node], None]:
    """Op(x, attribute=[...]) -> Op(x, ..., constant) with the constant at input ``index``."""

    def convert(node: ir.Node) -> None:
        attr = node.attributes.pop(attribute, None)
        if attr is None:
            return  # absent in both versions means the same (all axes, equal split)
        graph = node.graph
        array = np.array(attr.as_ints(), np.int64)
        name = fresh_initializer_name(graph, f"{node.name or node.op_type}_{attribute}")
        value = ir.Value(name=name, type=ir.TensorType(ir.DataType.INT64), shape=ir.Shape(array.shape),
                         const_value=ir.tensor(array, name=name))
        graph.register_initializer(value)
        if len(node.inputs) < index + 1:
            node.resize_inputs(index + 1)
        node.replace_input_with(index, value)

    return convert


def _split_num_outputs(node: ir.Node) -> None:
    """Split without a 'split' input needs num_outputs from opset 18 on: the number of outputs."""
    if (len(node.inputs) < 2 or node.inputs[1] is None) and "num_outputs" not in node.attributes:
        node.attributes["num_outputs"] = ir.AttrInt64("num_outputs", len(node.outputs))


def _softmax_on_last_axis(node: ir.Node) -> str | None:
    """The old (coerced 2-D) and new (one axis) forms agree when ``axis`` is the last axis."""
    x = node.inputs[0]
    axis = node.attributes.get_int("axis", 1)
    if axis == -1:
        return None
    if x is None or x.shape is None:
        return "has an input of unknown rank (its meaning changed at opset 13 unless it is the last axis)"
    if axis != len(x.shape) - 1:
        return f"normalizes axis {axis} of a rank-{len(x.shape)} input, whose meaning changed at opset 13"
    return None


def _softmax_explicit_axis(node: ir.Node) -> None:
    node.attributes["axis"] = ir.AttrInt64("axis", -1)


def _batchnorm_inference_only(node: ir.Node) -> str | None:
    return None if len(node.outputs) == 1 else "has training-mode outputs"


def _roialign_explicit_mode(node: ir.Node) -> str | None:
    return None if "coordinate_transformation_mode" in node.attributes else "relies on the old default mode"


# Keys of BREAKING that are handled anyway: a check (None: fine, else the reason it is not)
# and a converter run while raising (None: the node is valid as it is).
CONVERTIBLE: dict[tuple[str, int], tuple[Callable[[ir.Node], str | None] | None,
                                          Callable[[ir.Node], None] | None]] = {
    **{(op, 13): (None, _attribute_to_input("axes", 1)) for op in _AXES_INPUT_13},
    **{(op, 18): (None, _attribute_to_input("axes", 1)) for op in _AXES_INPUT_18},
    ("Split", 13): (None, _attribute_to_input("split", 1)),
    ("Split", 18): (None, _split_num_outputs),
    **{(op, 13): (_softmax_on_last_axis, _softmax_explicit_axis) for op in _SOFTMAX_FAMILY},
    ("BatchNormalization", 14): (_batchnorm_inference_only, None),
    ("RoiAlign", 16): (_roialign_explicit_mode, None),
}


def model_opset(model: ir.Model) -> int:
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))


@functools.lru_cache(maxsize=None)
def _schema(op_type: str, opset: int) -> tuple[int, bool] | None:
    """(since_version, deprecated) of ``op_type`` at ``opset``, None if the opset lacks it."""
    try:
        schema = onnx.defs.get_schema(op_type, opset, "")
    except onnx.defs.SchemaError:
        return None
    return schema.since_version, schema.deprecated


@functools.lru_cache(maxsize=None)
def first_opset(op_type: str) -> int:
    """The opset in which ``op_type`` first appears (``Gelu``: 20)."""
    return min(s.since_version for s in onnx.defs.get_all_schemas_with_history()
               if s.name == op_type and s.domain == "")


@functools.lru_cache(maxsize=None)
def _changes(op_type: str, old: int, new: int) -> tuple[int, ...]:
    """Versions of ``op_type`` introduced after opset ``old`` up to opset ``new``."""
    return tuple(sorted({s.since_version for s in onnx.defs.get_all_schemas_with_history()
                         if s.name == op_type and s.domain == "" and old < s.since_version <= new}))


def _default_nodes(model: ir.Model):
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.domain in DEFAULT_DOMAINS:
            yield node


def raise_refusal(model: ir.Model, target: int) -> str | None:
    """Why the model's ai.onnx opset cannot be raised to ``target`` (None: it can)."""
    current = model_opset(model)
    if current >= target:
        return None
    if target > onnx.defs.onnx_opset_version():
        return f"opset {target} is newer than the installed onnx knows"
    seen: set[str] = set()
    for node in _default_nodes(model):
        op = node.op_type
        if _schema(op, current) is None:
            continue  # not an op of the current opset: a fused op added for the raise itself
        new = _schema(op, target)
        if op not in seen and (new is None or (new[1] and not _schema(op, current)[1])):
            return f"{op} is deprecated or removed at opset {target}"
        changes = _changes(op, current, target)
        for version in changes:
            key = (op, version)
            if key not in BREAKING:
                continue
            if key in CONVERTIBLE:
                check = CONVERTIBLE[key][0]
                reason = check(node) if check is not None else None
            else:
                reason = BREAKING[key]
            if reason is not None:
                return f"node {node.name or op!r} ({op}) {reason} at opset {version}"
        if changes and not any((op, v) in CONVERTIBLE for v in changes):
            # A change the table above does not know: the node must at least still be well formed.
            unknown = sorted(set(node.attributes) - _attribute_names(op, target))
            if unknown:
                return f"node {node.name or op!r} ({op}) has attribute {unknown[0]!r}, which opset {target} lacks"
        seen.add(op)
    return None


@functools.lru_cache(maxsize=None)
def _attribute_names(op_type: str, opset: int) -> frozenset[str]:
    return frozenset(onnx.defs.get_schema(op_type, opset, "").attributes)


def raise_opset(model: ir.Model, target: int) -> None:
    """Raise the ai.onnx import to ``target`` (``raise_refusal`` must have said yes), converting the
    nodes whose op changed form, and the IR version to one that allows the opset."""
    current = model_opset(model)
    if current >= target:
        return
    for node in list(_default_nodes(model)):
        if _schema(node.op_type, current) is None:
            continue
        for version in _changes(node.op_type, current, target):
            convert = CONVERTIBLE.get((node.op_type, version), (None, None))[1]
            if convert is not None:
                convert(node)
    for domain in DEFAULT_DOMAINS:
        if domain in model.opset_imports:
            model.opset_imports[domain] = target
    for graph in model.graphs():
        for domain in DEFAULT_DOMAINS:
            if domain in graph.opset_imports:
                graph.opset_imports[domain] = target
    minimum_ir = onnx.helper.find_min_ir_version_for([onnx.helper.make_opsetid("", target)])
    model.ir_version = max(model.ir_version or 0, minimum_ir)


def raise_for_new_ops(model: ir.Model) -> int | None:
    """After a fusion: raise the opset to the newest first-version among ops the current opset
    does not have (the fused ones). Returns the new opset, or None when nothing was needed."""
    current = model_opset(model)
    needed = max((first_opset(n.op_type) for n in _default_nodes(model)
                  if _schema(n.op_type, current) is None), default=current)
    if needed <= current:
        return None
    raise_opset(model, needed)
    return needed


def fresh_initializer_name(graph: ir.Graph, base: str) -> str:
    """An initializer name not used in ``graph`` (the rewriter overwrites on a clash)."""
    name, i = base, 0
    while name in graph.initializers:
        i += 1
        name = f"{base}_{i}"
    return name
