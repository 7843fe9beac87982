"""Compile a model some of whose nodes cannot be lowered: those run in onnxruntime.

A node without a lowering (an op the compiler does not know, a contrib op, an output shape
that depends on the data such as NonMaxSuppression's or a TopK with a computed k, or a node
taking such a shape) is not a reason to refuse a model that onnxruntime runs. The graph is cut
into *segments* in topological order: compiled segments (TVM) and onnxruntime segments, each
an ONNX model of its own whose inputs are the values earlier segments (or the user) produce.

Stages alternate compiled / onnxruntime; each node takes the first stage of its kind at or after
every producer's stage, which keeps the number of segments (and so of hand-overs between the
engines) at the minimum the dependencies allow.

Lowering a compiled segment may reveal more nodes that cannot be lowered (a Reshape whose shape
comes from an onnxruntime segment): they join onnxruntime and the partition is redone, until
every compiled segment lowers. onnxruntime then sees each of its segments once at compile time,
which checks that it can run them and gives the types and shapes of their outputs.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Callable, Iterable

import onnx

from lepton_opt.errors import UnsupportedModelError, first_line

TVM = "tvm"
ORT = "onnxruntime"

# Re-partitioning rounds before giving up (each round moves at least one node to onnxruntime).
MAX_ROUNDS = 64

# Ops whose compiled kernels are worth a hand-over between the engines. A compiled segment after
# an onnxruntime segment holding none of them (the Gather/Slice/Concat post-processing behind a
# NonMaxSuppression) runs in onnxruntime too: its hand-overs would cost more than it saves.
HEAVY_OPS = frozenset({"LSTM", "GRU", "RNN", "Einsum", "Loop", "Scan", "If"})
_HEAVY_WORDS = ("Conv", "MatMul", "Gemm", "Attention")


def is_heavy(node: onnx.NodeProto) -> bool:
    """Convolutions, matrix products, attention (contrib variants included), RNNs, control flow."""
    return node.op_type in HEAVY_OPS or any(word in node.op_type for word in _HEAVY_WORDS)


class OnnxruntimeRefused(UnsupportedModelError):
    """onnxruntime cannot run a segment of nodes that cannot be lowered."""


@dataclasses.dataclass
class Segment:
    kind: str                 # TVM or ORT
    nodes: list[int]          # indices into the top-level graph's nodes, in graph order
    inputs: list[str]         # values it takes: graph inputs or outputs of earlier segments
    outputs: list[str]        # values later segments or the graph's outputs need


def used_names(node: onnx.NodeProto) -> list[str]:
    """The values ``node`` reads: its inputs and the outer-scope names its subgraphs use."""
    names = [n for n in node.input if n]
    for attr in node.attribute:
        for graph in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else
                      list(attr.graphs) if attr.type == onnx.AttributeProto.GRAPHS else []):
            names.extend(_free_names(graph))
    return list(dict.fromkeys(names))


def _free_names(graph: onnx.GraphProto) -> list[str]:
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    free: list[str] = []
    for node in graph.node:
        free.extend(n for n in used_names(node) if n not in defined)
        defined.update(o for o in node.output if o)
    free.extend(o.name for o in graph.output if o.name not in defined)
    return free


def segments(graph: onnx.GraphProto, in_ort: set[int]) -> list[Segment]:
    """Cut ``graph``'s nodes into alternating compiled / onnxruntime segments (see the module
    docstring); ``in_ort`` are the indices of the nodes onnxruntime must run."""
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output if out}
    stage: list[int] = []
    for i, node in enumerate(graph.node):
        kind = 1 if i in in_ort else 0
        after = max((stage[producer[n]] for n in used_names(node) if n in producer), default=0)
        stage.append(after if after % 2 == kind else after + 1)
    by_stage: dict[int, list[int]] = collections.defaultdict(list)
    for i, s in enumerate(stage):
        by_stage[s].append(i)
    initializers = {t.name for t in graph.initializer}
    order = sorted(by_stage)
    result = []
    for s in order:
        nodes = by_stage[s]
        produced = {o for i in nodes for o in graph.node[i].output if o}
        inputs = [n for i in nodes for n in used_names(graph.node[i])
                  if n not in produced and n not in initializers]
        result.append(Segment(TVM if s % 2 == 0 else ORT, nodes, list(dict.fromkeys(inputs)), []))
    graph_outputs = [o.name for o in graph.output]
    for k, seg in enumerate(result):
        produced = {o for i in seg.nodes for o in graph.node[i].output if o}
        later = {n for other in result[k + 1:] for n in other.inputs}
        seg.outputs = [o for i in seg.nodes for o in graph.node[i].output
                       if o and (o in later or o in graph_outputs)]
        seg.outputs = list(dict.fromkeys(seg.outputs))
        assert produced  # every stage holds at least one node
    return result


def extract(model: onnx.ModelProto, seg: Segment, types: dict[str, onnx.ValueInfoProto]) -> onnx.ModelProto:
    """The ONNX model of one segment: its nodes, the initializers they read, the value infos
    known for what they produce; inputs and outputs typed from ``types`` (name -> value info)."""
    graph = model.graph
    nodes = [graph.node[i] for i in seg.nodes]
    read = {n for node in nodes for n in used_names(node)}
    produced = {o for node in nodes for o in node.output if o}

    def info(name: str) -> onnx.ValueInfoProto:
        return types[name] if name in types else onnx.helper.make_empty_tensor_value_info(name)

    sub = onnx.helper.make_graph(
        nodes, f"{graph.name or 'graph'}_segment",
        [info(n) for n in seg.inputs], [info(n) for n in seg.outputs],
        [t for t in graph.initializer if t.name in read],
        value_info=[v for v in graph.value_info if v.name in produced and v.name not in seg.outputs])
    sub.sparse_initializer.extend(t for t in graph.sparse_initializer if t.values.name in read)
    out = onnx.helper.make_model(sub, opset_imports=list(model.opset_import), ir_version=model.ir_version,
                                 producer_name="lepton-opt partition")
    out.functions.extend(model.functions)
    return out


def value_types(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    graph = model.graph
    return {v.name: v for v in [*graph.input, *graph.value_info, *graph.output]}


def _rank_known(info: onnx.ValueInfoProto | None) -> bool:
    return (info is not None and info.type.HasField("tensor_type") and info.type.tensor_type.elem_type != 0
            and info.type.tensor_type.HasField("shape"))


def ort_output_types(model: onnx.ModelProto, session) -> dict[str, onnx.ValueInfoProto]:
    """Value infos of an onnxruntime segment's outputs, as onnxruntime's session infers them.

    onnxruntime reports ``[]`` both for a scalar and for an output whose shape it does not know
    (an ``ai.onnx.ml`` ``Scaler``'s): ``[]`` is taken as a scalar only where ONNX's shape
    inference says rank 0 too; otherwise the output stays untyped, which its readers then see."""
    result = {}
    scalars: set[str] | None = None
    for out in session.get_outputs():
        elem = _ORT_TYPES.get(out.type)
        if elem is None or out.shape is None:
            continue
        if not out.shape:
            if scalars is None:
                scalars = _inferred_scalars(model)
            if out.name not in scalars:
                continue
        dims = [d if isinstance(d, int) and d >= 0 else (d if isinstance(d, str) and d else None)
                for d in out.shape]
        dims = [f"{_identifier(out.name)}_dim{axis}" if d is None else d for axis, d in enumerate(dims)]
        result[out.name] = onnx.helper.make_tensor_value_info(out.name, elem, dims)
    return result


def _inferred_scalars(model: onnx.ModelProto) -> set[str]:
    """The graph outputs ONNX's shape inference finds to be rank 0."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception as e:  # noqa: BLE001 - no inference, no evidence of a scalar: the output stays untyped
        logging.getLogger(__name__).info("partition: ONNX shape inference failed on a segment (%s); its outputs "
                                         "onnxruntime reports as [] stay untyped", first_line(e))
        return set()
    return {o.name for o in inferred.graph.output
            if o.type.HasField("tensor_type") and o.type.tensor_type.HasField("shape")
            and not o.type.tensor_type.shape.dim}


_ORT_TYPES = {
    "tensor(float)": onnx.TensorProto.FLOAT, "tensor(float16)": onnx.TensorProto.FLOAT16,
    "tensor(bfloat16)": onnx.TensorProto.BFLOAT16, "tensor(double)": onnx.TensorProto.DOUBLE,
    "tensor(int8)": onnx.TensorProto.INT8, "tensor(int16)": onnx.TensorProto.INT16,
    "tensor(int32)": onnx.TensorProto.INT32, "tensor(int64)": onnx.TensorProto.INT64,
    "tensor(uint8)": onnx.TensorProto.UINT8, "tensor(uint16)": onnx.TensorProto.UINT16,
    "tensor(uint32)": onnx.TensorProto.UINT32, "tensor(uint64)": onnx.TensorProto.UINT64,
    "tensor(bool)": onnx.TensorProto.BOOL,
}


def _identifier(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


@dataclasses.dataclass
class Plan:
    """A converged partition: the segments with their ONNX models, and why nodes left TVM."""

    segments: list[Segment]
    models: list[onnx.ModelProto]
    reasons: dict[int, str]            # node index -> why it runs in onnxruntime
    graph: onnx.GraphProto             # the whole model's graph (for node names and op types)

    def uncompiled_share(self) -> float:
        """The share of the model's compute-heavy ops that onnxruntime would run (0 when the
        model has none)."""
        total = sum(heavy_ops(n) for n in self.graph.node)
        return sum(heavy_ops(n) for n in self.fallback_nodes()) / total if total else 0.0

    def fallback_nodes(self) -> list[onnx.NodeProto]:
        return [self.graph.node[i] for i in sorted(self.reasons)]

    def summary(self) -> str:
        counts = collections.Counter(_op(self.graph.node[i]) for i, why in self.reasons.items()
                                     if not why.startswith("light post-processing"))
        ops = ", ".join(f"{op} x{c}" if c > 1 else op for op, c in sorted(counts.items()))
        compiled = sum(len(s.nodes) for s in self.segments if s.kind == TVM)
        return (f"{len(self.reasons)} node(s) run in onnxruntime, not compiled (no lowering: {ops}); "
                f"{compiled} node(s) compiled in {sum(s.kind == TVM for s in self.segments)} segment(s); "
                "the artifact needs onnxruntime to run")


def heavy_ops(node: onnx.NodeProto) -> int:
    """How many compute-heavy ops ``node`` is, or holds in its subgraphs."""
    count = int(is_heavy(node) and node.op_type not in ("If", "Loop", "Scan"))
    for attr in node.attribute:
        for graph in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else
                      list(attr.graphs) if attr.type == onnx.AttributeProto.GRAPHS else []):
            count += sum(heavy_ops(n) for n in graph.node)
    return count


def _op(node: onnx.NodeProto) -> str:
    return f"{node.domain}.{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type


def plan(model: onnx.ModelProto, failed: dict[int, str],
         lower: Callable[[onnx.ModelProto], list[tuple[int, str]]],
         ort_session: Callable[[onnx.ModelProto], object], source: str,
         notes: list[str] | None = None) -> Plan:
    """Partition ``model`` so that every compiled segment lowers.

    ``failed``: node index -> reason, the nodes known not to lower. ``lower(segment_model)``
    lowers a compiled segment and returns (index in the segment, reason) for each node that does
    not lower, and the value infos of its outputs when it lowered. ``ort_session(segment_model)`` opens an onnxruntime session on a segment, raising
    if onnxruntime cannot run it. ``notes`` hears what the partition could not settle (output
    dims left dynamic)."""
    graph = model.graph
    reasons = dict(failed)
    for _ in range(MAX_ROUNDS):
        types = value_types(model)
        cut = segments(graph, set(reasons))
        models, more = [], {}
        for k, seg in enumerate(cut):
            if seg.kind == TVM and k > 0 and not any(is_heavy(graph.node[i]) for i in seg.nodes):
                more.update((i, "light post-processing between onnxruntime nodes (no compute-heavy op): "
                                "runs there to save a hand-over") for i in seg.nodes)
                break
            if seg.kind == TVM:
                # An input whose type or rank nobody knows cannot be compiled: its readers go too.
                unknown = {n for n in seg.inputs if not _rank_known(types.get(n))}
                for i in seg.nodes:
                    if unknown & set(used_names(graph.node[i])):
                        more[i] = f"takes {sorted(unknown & set(used_names(graph.node[i])))[0]!r}, whose shape " \
                                  "is known only at run time"
                if more:
                    break
                sub = extract(model, seg, types)
                failures, known = lower(sub)
                for j, reason in failures:
                    more[seg.nodes[j]] = reason
                if more:
                    break
                for name, info in known.items():
                    if not _rank_known(types.get(name)):
                        types[name] = info
                _merge_value_info(model, types, seg.outputs)
                sub = extract(model, seg, types)
            else:
                sub = extract(model, seg, types)
                try:
                    session = ort_session(sub)
                except Exception as e:  # noqa: BLE001 - onnxruntime's own error, reported below
                    names = ", ".join(f"{_op(graph.node[i])} node {graph.node[i].name or '?'!r}"
                                      for i in seg.nodes if i in reasons)
                    raise OnnxruntimeRefused(f"onnxruntime cannot run {names} either ({first_line(e)})") from None
                inferred = ort_output_types(sub, session)
                inferred.update(_sampled_static_types(sub, session, inferred, notes))
                for name, info in inferred.items():
                    if not _static(types.get(name)):
                        types[name] = info
                # Outputs typed by onnxruntime become known to the later segments.
                _merge_value_info(model, types, seg.outputs)
            models.append(sub)
        if not more:
            return Plan(cut, models, reasons, graph)
        reasons.update(more)
    raise UnsupportedModelError(f"{source}: the compiled/onnxruntime partition did not settle in {MAX_ROUNDS} rounds")


# Ops whose output shape may follow the *values* of their inputs: a segment holding one keeps the
# dims onnxruntime could not infer symbolic.
_VALUE_SHAPED_OPS = frozenset({
    "NonZero", "NonMaxSuppression", "Unique", "Compress", "TopK", "Range", "ConstantOfShape", "Expand",
    "Reshape", "Tile", "Resize", "Upsample", "Slice", "Pad", "OneHot", "Loop", "If", "Scan", "Split",
    "Squeeze", "Unsqueeze", "StringSplit", "RoiAlign", "CenterCropPad", "Col2Im", "DFT", "STFT",
})


def _static(info: onnx.ValueInfoProto | None) -> bool:
    return _rank_known(info) and all(d.HasField("dim_value") for d in info.type.tensor_type.shape.dim)


def _sampled_static_types(model: onnx.ModelProto, session, inferred: dict,
                          notes: list[str] | None = None) -> dict[str, onnx.ValueInfoProto]:
    """Output types with every dim fixed, where onnxruntime's inference left dims open but the
    shapes follow from the input shapes alone (no op in ``_VALUE_SHAPED_OPS``, static inputs):
    the segment runs on two sets of random inputs and the dims both runs agree on are taken
    (a contrib DynamicQuantizeLSTM: its output left symbolic made the compiled segment behind it
    dynamic and 7x slower). Why dims stay open, when the sample runs fail, goes to ``notes``."""
    import numpy as np

    if any(n.op_type in _VALUE_SHAPED_OPS for n in model.graph.node) or \
            not all(_static(i) for i in model.graph.input) or \
            all(_static(inferred.get(o.name)) for o in model.graph.output):
        return {}
    shapes = []
    for seed in (0, 1):
        rng = np.random.default_rng(seed)
        feeds = {}
        for i in model.graph.input:
            dims = [d.dim_value for d in i.type.tensor_type.shape.dim]
            dtype = onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)
            feeds[i.name] = (rng.standard_normal(dims).astype(dtype) if np.dtype(dtype).kind == "f"
                             else np.zeros(dims, dtype))
        try:
            outs = session.run(None, feeds)
        except Exception as e:  # noqa: BLE001 - not runnable on made-up inputs: dims stay open, said in notes
            if notes is not None:
                names = ", ".join(o.name for o in model.graph.output)
                notes.append(f"onnxruntime segment outputs {names} stay dynamic in the compiled code behind "
                             f"them: a sample run to fix their shapes failed ({first_line(e)})")
            return {}
        if not all(isinstance(o, np.ndarray) for o in outs):
            return {}  # a sequence or map output: no tensor shape to fix
        shapes.append([o.shape for o in outs])
    if shapes[0] != shapes[1]:
        return {}
    result = {}
    for out, shape in zip(session.get_outputs(), shapes[0]):
        elem = _ORT_TYPES.get(out.type)
        if elem is not None:
            result[out.name] = onnx.helper.make_tensor_value_info(out.name, elem, list(shape))
    return result


def _merge_value_info(model: onnx.ModelProto, types: dict[str, onnx.ValueInfoProto], names: Iterable[str]) -> None:
    graph = model.graph
    declared = {v.name: v for v in graph.value_info}
    for name in names:
        info = types.get(name)
        if info is None or any(o.name == name for o in graph.output):
            continue
        if name in declared:
            if _static(declared[name]) or not _static(info) and _rank_known(declared[name]):
                continue
            declared[name].CopyFrom(info)
        else:
            graph.value_info.append(info)
