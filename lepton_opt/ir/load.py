"""Load an ONNX model (path, bytes or ``onnx.ModelProto``) into an onnx-ir model.

The user's model is never modified: a path is read, bytes are parsed, and a ``ModelProto`` is
copied before anything else happens. Loading also

* checks what the compiler can handle (IR version, ``ai.onnx`` opset),
* applies input-shape overrides (``--input-shape NAME:1x3x224x224``), substituting a named
  symbolic dimension everywhere it appears once one input fixes it, and
* computes the SHA-256 of the serialized source, recorded in compiled artifacts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Union

import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from google.protobuf.message import DecodeError

from lepton_opt.errors import ModelLoadError, ShapeError, first_line

ModelSource = Union[str, os.PathLike, bytes, onnx.ModelProto, ir.Model]
InputShapes = Mapping[str, Sequence[Union[int, str]]]

# Newest ai.onnx opset whose operator schemas the installed onnx package knows.
MAX_SUPPORTED_OPSET = onnx.defs.onnx_opset_version()


@dataclasses.dataclass
class LoadedModel:
    model: ir.Model
    source: str  # a path, or "<bytes>" / "<ModelProto>" for in-memory models
    sha256: str
    opset: int  # the source model's ai.onnx opset (passes may raise the model's own)


def load_model(source: ModelSource, input_shapes: InputShapes | None = None) -> LoadedModel:
    """Read ``source`` into a fresh onnx-ir model and apply ``input_shapes``."""
    proto, name, digest = _read(source)
    _check_versions(proto, name)
    _check_no_maps(proto, name)
    _declare_used_domains(proto)
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as e:  # onnx-ir rejects malformed graphs (dangling names, bad attributes)
        raise ModelLoadError(f"{name}: cannot read the ONNX graph: {first_line(e, limit=None)}") from e
    try:
        # ONNX requires topological order, but some tools (fp16 converters among them) append
        # nodes at the end; every later stage walks the graph in order.
        model.graph.sort()
    except Exception as e:
        raise ModelLoadError(f"{name}: the graph cannot be put in topological order (a cycle?): {first_line(e, limit=None)}") from e
    _check_defined(model, name)
    _initializers_are_not_inputs(model)
    _unknown_dims_to_symbolic(model)
    if input_shapes:
        apply_input_shapes(model, input_shapes, name)
    _infer_output_shapes(model)
    return LoadedModel(model, name, digest, model.opset_imports.get("", 1))


def _read(source: ModelSource) -> tuple[onnx.ModelProto, str, str]:
    if isinstance(source, ir.Model):
        proto = ir.serde.serialize_model(source)  # a copy: the caller's IR stays untouched
        return proto, "<ir.Model>", _sha256(proto.SerializeToString())
    if isinstance(source, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(source)
        return proto, "<ModelProto>", _sha256(proto.SerializeToString())
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        return _parse(data, "<bytes>"), "<bytes>", _sha256(data)
    if not isinstance(source, (str, os.PathLike)):
        raise ModelLoadError(
            f"cannot load a model from a {type(source).__name__}: pass a path, bytes or onnx.ModelProto"
        )
    path = Path(source)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if not path.is_file():
        raise ModelLoadError(f"{path}: not a file (expected an .onnx model)")
    data = path.read_bytes()
    proto = _parse(data, str(path))
    if _uses_external_data(proto):
        _check_external_locations(proto, path)
        try:
            onnx.external_data_helper.load_external_data_for_model(proto, str(path.parent))
        except (OSError, ValueError, onnx.checker.ValidationError) as e:
            files = ", ".join(sorted(_external_locations(proto))) or "?"
            raise ModelLoadError(
                f"{path}: external data file missing or unreadable ({files}); keep it beside the model"
            ) from e
    return proto, str(path), _sha256(data)


def _parse(data: bytes, name: str) -> onnx.ModelProto:
    if not data:
        raise ModelLoadError(f"{name}: empty file, not an ONNX model")
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeWarning, ValueError) as e:
        raise ModelLoadError(
            f"{name}: not an ONNX model or truncated protobuf ({first_line(e, limit=None)}); re-export or re-download it"
        ) from e
    if not proto.HasField("graph") or (not proto.graph.node and not proto.graph.output):
        raise ModelLoadError(f"{name}: parsed as protobuf but holds no ONNX graph; is it an ONNX model?")
    return proto


def _uses_external_data(proto: onnx.ModelProto) -> bool:
    return any(
        t.data_location == onnx.TensorProto.EXTERNAL
        for t in onnx.external_data_helper._get_all_tensors(proto)  # noqa: SLF001 - the helper onnx itself uses
    )


def _external_locations(proto: onnx.ModelProto) -> set[str]:
    locations = set()
    for tensor in onnx.external_data_helper._get_all_tensors(proto):  # noqa: SLF001
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = onnx.external_data_helper.ExternalDataInfo(tensor).location
            if location:
                locations.add(location)
    return locations


def _check_external_locations(proto: onnx.ModelProto, path: Path) -> None:
    """External data must lie in the model's folder: a location that is absolute, climbs out
    with ``..`` or is a symlink to a file elsewhere (``../../etc/passwd``) is refused before
    anything is read (onnx refuses them too, in the versions that check)."""
    folder = path.parent.resolve()
    for location in sorted(_external_locations(proto)):
        target = (folder / location).resolve() if "\0" not in location else None
        if (os.path.isabs(location) or ".." in Path(location).parts or target is None
                or not target.is_relative_to(folder)):
            raise ModelLoadError(
                f"{path}: external data location {location!r} lies outside the model's folder; "
                "lepton-opt reads external data only from files beside the model"
            )


def _declare_used_domains(proto: onnx.ModelProto) -> None:
    """Declare (version 1) the op domains nodes use but the model does not import: onnxruntime's
    transformers optimizer writes ``com.microsoft`` nodes without their opset import, which
    onnxruntime accepts and ONNX's shape inference rejects outright."""
    imported = {o.domain for o in proto.opset_import}
    used = set()

    def walk(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            used.add(node.domain)
            for attr in node.attribute:
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    walk(sub)

    walk(proto.graph)
    for domain in sorted(used - imported - {"", "ai.onnx"}):
        proto.opset_import.append(onnx.helper.make_opsetid(domain, 1))


def _has_map(ty: onnx.TypeProto) -> bool:
    kind = ty.WhichOneof("value")
    if kind == "map_type":
        return True
    if kind in ("sequence_type", "optional_type"):
        return _has_map(getattr(ty, kind).elem_type)
    return False


def _type_text(ty: onnx.TypeProto) -> str:
    kind = ty.WhichOneof("value")
    if kind == "tensor_type":
        return f"tensor({onnx.helper.tensor_dtype_to_np_dtype(ty.tensor_type.elem_type)})"
    if kind == "map_type":
        key = onnx.helper.tensor_dtype_to_np_dtype(ty.map_type.key_type)
        return f"map({key}, {_type_text(ty.map_type.value_type)})"
    if kind in ("sequence_type", "optional_type"):
        return f"{kind.split('_')[0]}({_type_text(getattr(ty, kind).elem_type)})"
    return "?"


def _check_no_maps(proto: onnx.ModelProto, name: str) -> None:
    """Values of map type (what an ai.onnx.ml ``ZipMap`` makes of a classifier's probabilities,
    and ``DictVectorizer`` takes) have no representation in onnx-ir: one line naming the value,
    the node that makes it and what to do, rather than the reader's own error."""
    graph = proto.graph
    maps = [v for v in [*graph.input, *graph.output, *graph.value_info] if _has_map(v.type)]
    if not maps:
        return
    value = maps[0]
    producer = next((n for n in graph.node if value.name in n.output), None)
    made_by = f" made by {producer.op_type} node {producer.name or '?'!r}" if producer is not None else ""
    remedy = ("convert the classifier without it (skl2onnx: options={id(model): {'zipmap': False}}; "
              "onnxmltools: zipmap=False), or remove the ZipMap node and read its input"
              if producer is not None and producer.op_type == "ZipMap" else "feed and return tensors instead")
    kind = "input" if any(v.name == value.name for v in graph.input) else "value"
    raise ModelLoadError(f"{name}: {kind} {value.name!r}{made_by} is a map "
                         f"({_type_text(value.type)}), which lepton-opt cannot represent; {remedy}")


def _check_versions(proto: onnx.ModelProto, name: str) -> None:
    if proto.ir_version and proto.ir_version < 3:
        raise ModelLoadError(
            f"{name}: ONNX IR version {proto.ir_version} is too old (need ≥ 3); "
            "upgrade it with onnx.version_converter"
        )
    for opset in proto.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version > MAX_SUPPORTED_OPSET:
            raise ModelLoadError(
                f"{name}: opset {opset.version} is newer than the newest supported ({MAX_SUPPORTED_OPSET}); "
                f"export with opset ≤ {MAX_SUPPORTED_OPSET} or upgrade the onnx package"
            )


def parse_input_shape(text: str) -> tuple[str, list[int]]:
    """Parse ``NAME:1x3x224x224`` (also ``NAME:1,3,224,224``; ``NAME:`` for a scalar)."""
    name, sep, dims = text.rpartition(":")
    if not sep or not name:
        raise ShapeError(f"--input-shape {text!r}: expected NAME:DIMS such as input:1x3x224x224")
    dims = dims.strip()
    if not dims:
        return name, []
    parts = re.split(r"[x,]", dims)
    if not all(p.strip().isdigit() for p in parts):
        raise ShapeError(
            f"--input-shape {text!r}: dimensions must be non-negative integers, as in {name}:1x3x224x224"
        )
    return name, [int(p) for p in parts]


def apply_input_shapes(model: ir.Model, input_shapes: InputShapes, source: str) -> None:
    """Fix input dimensions in place; symbolic names fixed by one input are fixed everywhere."""
    inputs = {v.name: v for v in model.graph.inputs if not v.is_initializer()}
    unknown = [n for n in input_shapes if n not in inputs]
    if unknown:
        raise ShapeError(
            f"{source}: --input-shape names unknown input {unknown[0]!r}; the model's inputs are "
            + ", ".join(repr(n) for n in inputs)
        )
    symbols: dict[str, int] = {}
    ambiguous: set[str] = set()
    for name, dims in input_shapes.items():
        try:
            dims = [int(d) for d in dims]
        except (TypeError, ValueError):
            raise ShapeError(f"{source}: the shape given for input {name!r} is {dims!r}; give whole numbers, "
                             "as in [1, 3, 224, 224] (to keep its dimensions dynamic, leave the input out)") from None
        if any(d < 0 for d in dims):
            raise ShapeError(f"{source}: --input-shape for {name!r} has a negative dimension {dims}")
        value = inputs[name]
        old = value.shape
        if old is not None:
            if len(old) != len(dims):
                raise ShapeError(
                    f"{source}: input {name!r} has rank {len(old)} ({_fmt_shape(old)}) but "
                    f"--input-shape gives {len(dims)} dimensions ({'x'.join(map(str, dims))})"
                )
            for axis, (old_dim, new_dim) in enumerate(zip(old, dims)):
                # 0 in a declared input shape is one more way exporters spell "unknown"
                if isinstance(old_dim, int) and old_dim not in (0, new_dim):
                    raise ShapeError(
                        f"{source}: input {name!r} dimension {axis} is fixed at {old_dim} in the model; "
                        f"--input-shape gives {new_dim}"
                    )
                if isinstance(old_dim, ir.SymbolicDim) and old_dim.value is not None:
                    # Two values for one name: the name only meant "unknown" (paddle2onnx calls
                    # every free dim "?"); the shapes given win and the name fixes nothing else.
                    if symbols.setdefault(old_dim.value, new_dim) != new_dim:
                        ambiguous.add(old_dim.value)
        value.shape = ir.Shape(dims)
    for name in ambiguous:
        symbols.pop(name)
    if symbols:
        for value in _all_values(model.graph):
            shape = value.shape
            if shape is not None and any(
                isinstance(d, ir.SymbolicDim) and d.value in symbols for d in shape
            ):
                value.shape = ir.Shape(
                    [symbols.get(d.value, d) if isinstance(d, ir.SymbolicDim) else d for d in shape]
                )


def _initializers_are_not_inputs(model: ir.Model) -> None:
    """Graph inputs that are also initializers (every weight, in models written before ONNX IR
    version 4: onnx's own "light" test models, old Caffe2 and CNTK exports) become plain
    initializers, as onnxruntime's remove_initializer_from_input tool makes them. lepton-opt
    compiles weights as constants either way, but constant folding leaves a graph input alone:
    the weights such a model computes from them would be computed at run time."""
    graph = model.graph
    weights = [v for v in graph.inputs if v.is_initializer()]
    for value in weights:
        graph.inputs.remove(value)
    if weights and model.ir_version < 4:
        model.ir_version = 4  # the first version in which an initializer need not be an input


def _check_defined(model: ir.Model, source: str) -> None:
    """Every node input is a graph input, an initializer or some node's output (of this graph or
    an enclosing one); onnx-ir reads a dangling name as a value defined nowhere."""
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        for value in node.inputs:
            if (value is not None and value.producer() is None and not value.is_graph_input()
                    and not value.is_initializer() and value.name):
                raise ModelLoadError(f"{source}: node {node.name or node.op_type!r} ({node.op_type}) reads "
                                     f"{value.name!r}, which no node, input or initializer defines; "
                                     "the model is malformed: re-export it")
    for value in model.graph.outputs:
        if value.producer() is None and not value.is_graph_input() and not value.is_initializer():
            raise ModelLoadError(f"{source}: graph output {value.name!r} is computed by no node and is no input "
                                 "or initializer; the model is malformed: re-export it")


# Value.meta key: the value's shape is the exporter's declaration alone (inference found none).
DECLARED_ONLY = "lepton_opt.declared_shape_only"


def _infer_output_shapes(model: ir.Model) -> None:
    """Graph outputs take the shapes inference gives them, not the declared ones: exporters
    declare output shapes from tracing or naming, and some are plain wrong (a captcha OCR model
    declares [1, seqlen] for a [T, 1, classes] output; onnxruntime warns and ignores it)."""
    declared = {}
    for value in model.graph.outputs:
        if not value.is_graph_input() and not value.is_initializer():
            declared[value] = value.shape
            value.shape = None
    try:
        common_passes.ShapeInferencePass(check_type=False, strict_mode=False, data_prop=True)(model)
    except Exception as e:  # noqa: BLE001 - best effort: the declared shapes stand, the passes infer again
        logging.getLogger(__name__).info("shape inference at load failed (%s); declared output shapes kept",
                                         str(e).splitlines()[0] if str(e) else type(e).__name__)
    for value, shape in declared.items():
        inferred = value.shape
        if inferred is None and shape is not None:
            value.meta[DECLARED_ONLY] = True  # a claim nothing checked (see ReshapeTargetFromOutputShape)
        if inferred is None or (shape is not None and len(shape) == len(inferred)):
            # Inference could not tell (a Loop output, a dim computed at run time): the
            # declaration fills what it left open; where inference knows a dim, inference wins.
            value.shape = shape if inferred is None else ir.Shape(
                [i if isinstance(i, int) else d for i, d in zip(inferred, shape)])


def _unknown_dims_to_symbolic(model: ir.Model) -> None:
    """Negative dims become anonymous symbolic dims: paddle2onnx (and older tools) declare an
    unknown dim as ``dim_value: -1`` instead of a ``dim_param``, which onnxruntime accepts."""
    for value in _all_values(model.graph):
        shape = value.shape
        if shape is not None and any(isinstance(d, int) and d < 0 for d in shape):
            value.shape = ir.Shape([ir.SymbolicDim(None) if isinstance(d, int) and d < 0 else d for d in shape])


def _all_values(graph: ir.Graph):
    yield from graph.inputs
    for node in ir.traversal.RecursiveGraphIterator(graph):
        yield from node.outputs


def _fmt_shape(shape: ir.Shape) -> str:
    return "x".join(str(d.value if isinstance(d, ir.SymbolicDim) else d) for d in shape)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
