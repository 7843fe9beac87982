"""IR model -> Relax -> built library -> :class:`CompiledModel`."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Callable, Sequence

import onnx
import onnx_ir as ir
from tvm import relax
from tvm import tirx as tir

from lepton_opt.errors import LeptonError, ShapeError, UnsupportedModelError, first_line
from lepton_opt.targets.artifact import CompiledModel, PartitionedModel, make_manifest, onnxruntime_session
from lepton_opt.targets.build import TargetSpec, build
from lepton_opt.targets.lower import DTYPES, Lowerer, LoweredModule
from lepton_opt.targets.records import load_database, record_dirs, records_digest
from lepton_opt.targets.ops import converter_table
from lepton_opt.targets.ops.control import DATA_DEPENDENT_OPS


def lower_model(model: ir.Model, source: str = "model", target_kind: str = "llvm") -> LoweredModule:
    return Lowerer(model, converter_table(), source, target_kind=target_kind).lower()


def unsupported_ops(model: ir.Model) -> dict[str, list[str]]:
    """Op type -> node names for every node the lowering has no converter for."""
    table = converter_table()
    from lepton_opt.targets.lower import op_key

    missing: dict[str, list[str]] = {}
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if op_key(node) not in table:
            missing.setdefault(op_key(node), []).append(node.name or "?")
    return missing


def compile_with_fallback(model: ir.Model, spec: TargetSpec, *, source: str, sha256: str, opset: int,
                          passes: list[str], records: Sequence[str | os.PathLike] = (), use_cache: bool = True,
                          warn: Callable[[str], None] | None = None,
                          refuse: Callable[[list[ir.Node]], bool] | None = None) -> CompiledModel:
    """:func:`compile_model`, except that nodes that cannot be lowered run in onnxruntime
    (:mod:`.partition`); the result is then a :class:`PartitionedModel` and ``warn`` hears
    which nodes and why. ``refuse(nodes)`` may decline the partition for those failing nodes
    (the caller has a better remedy): the UnsupportedModelError is raised instead."""
    try:
        lowered = Lowerer(model, converter_table(), source, partial=True, target_kind=spec.kind).lower()
    except UnsupportedModelError as e:
        failed = getattr(e, "failed_nodes", None)
        if not failed or (refuse is not None and refuse([n for n, _ in failed])):
            raise _refused(model, source, str(e)) from None
        return _compile_partitioned(model, spec, failed, source=source, sha256=sha256, opset=opset,
                                    passes=passes, records=records, use_cache=use_cache, warn=warn,
                                    first_error=str(e))
    options = dict(source=source, sha256=sha256, opset=opset, passes=passes, records=records,
                   use_cache=use_cache, warn=warn)
    try:
        return compile_model(model, spec, lowered=lowered, **options)
    except BuildError as e:
        # TVM's passes cannot take every op whose output shape depends on the data (NonZero
        # between convolutions breaks its layout conversion): those run in onnxruntime.
        failed = [(node, f"{node.op_type} node {node.name or '?'!r}: its output shape depends on the data "
                         f"and the build failed with it ({e.first_line})")
                  for node in model.graph if node.op_type in DATA_DEPENDENT_OPS]
        if not failed or len(failed) == len(model.graph):
            raise
        return _compile_partitioned(model, spec, failed, first_error=str(e), **options)




class BuildError(UnsupportedModelError):
    """TVM failed to build a model that lowered."""

    def __init__(self, message: str, first_line: str):
        super().__init__(message)
        self.first_line = first_line


# A partition that would leave more than this share of the compute-heavy ops to onnxruntime is
# refused with the lowering error: the user is better served by fixing what it says (a dynamic
# dim to fix with --input-shape, an If to fold) than by an artifact that is mostly onnxruntime.
MAX_UNCOMPILED_SHARE = 0.5


def _compile_partitioned(model: ir.Model, spec: TargetSpec, failed: list[tuple[ir.Node, str]], *, source: str,
                         warn: Callable[[str], None] | None, first_error: str, **options) -> PartitionedModel:
    from lepton_opt.targets import partition

    nodes = list(model.graph)
    index = {id(node): i for i, node in enumerate(nodes)}
    proto = ir.serde.serialize_model(model)
    user_inputs = {v.name for v in model.graph.inputs}
    lowerings: dict[tuple[str, ...], LoweredModule] = {}
    built: dict[tuple[str, ...], CompiledModel] = {}  # segment -> its build, across the partition's rounds

    def lower(sub: onnx.ModelProto) -> tuple[list[tuple[int, str]], dict[str, onnx.ValueInfoProto]]:
        sub_model = ir.serde.deserialize_model(sub)
        # Dims a segment behind onnxruntime takes are known only at run time: a node needing
        # them fixed goes to onnxruntime. Before any such segment, they are the user's to fix.
        behind = any(v.name not in user_inputs for v in sub_model.graph.inputs)
        try:
            lowered = Lowerer(sub_model, converter_table(), source, partial=True, shape_errors_fail_nodes=behind,
                              target_kind=spec.kind).lower()
            lowerings[_segment_key(sub)] = lowered  # the build takes it, rather than lowering again
        except UnsupportedModelError as e:
            failures = getattr(e, "failed_nodes", None)
            if not failures:
                raise
            positions = {id(node): j for j, node in enumerate(sub_model.graph)}
            return [(positions[id(node)], reason) for node, reason in failures], {}
        # The lowering knows the type of every output (onnx's shape inference may not, behind a
        # contrib op): the onnxruntime segments that take them need it.
        types = {}
        for name, ty in zip(lowered.output_names, lowered.mod["main"].ret_ty.fields):
            elem = _ONNX_TYPES.get(str(ty.dtype))
            if elem is not None:
                dims = [d if isinstance(d, int) else f"{name}_dim{a}" for a, d in enumerate(_dims(ty))]
                types[name] = onnx.helper.make_tensor_value_info(name, elem, dims)
        return [], types

    reasons = {index[id(n)]: reason for n, reason in failed}
    while True:
        try:
            notes: list[str] = []
            plan = partition.plan(proto, reasons, lower, lambda sub: onnxruntime_session(sub.SerializeToString()),
                                  source, notes)
        except partition.OnnxruntimeRefused as e:
            raise _refused(model, source, first_error, str(e)) from None
        if plan.uncompiled_share() > MAX_UNCOMPILED_SHARE:
            raise _refused(model, source, first_error, f"running these nodes in onnxruntime would leave "
                           f"{plan.uncompiled_share():.0%} of the model's convolutions/matmuls uncompiled")
        try:
            parts, described = _build_segments(plan, spec, source, warn, options, lowerings, built)
            break
        except _SegmentBuildError as e:
            # A compiled segment that lowered but did not build: its data-dependent ops (see
            # DATA_DEPENDENT_OPS) go to onnxruntime, if that changes anything.
            why = getattr(e.error, "first_line", None) or first_line(e.error)
            more = {i: f"{nodes[i].op_type} node {nodes[i].name or '?'!r}: its output shape depends on the data "
                       f"and the build failed with it ({why})"
                    for i in e.segment.nodes if nodes[i].op_type in DATA_DEPENDENT_OPS and i not in reasons}
            if not more and isinstance(e.error, ShapeError) and not set(e.segment.inputs) <= user_inputs:
                # Its dynamic dims come from an onnxruntime segment, not from the user's inputs, so
                # --input-shape cannot fix them (a DPT neck behind a run-time Resize): the segment runs
                # in onnxruntime too, within the share of uncompiled convolutions/matmuls checked above.
                more = {i: f"{nodes[i].op_type} node {nodes[i].name or '?'!r}: behind an onnxruntime segment, "
                           f"its segment did not build with the dims computed there ({why})"
                        for i in e.segment.nodes if i not in reasons}
            if not more:
                raise e.error from None
            reasons.update(more)
    first = next((p for p in parts if isinstance(p, CompiledModel)), None)
    if first is not None:
        manifest = dict(first.manifest)
        manifest.pop("tuning", None)
        manifest.pop("library", None)
    else:
        # Nothing lowers (a scikit-learn pipeline of ai.onnx.ml ops, say): the artifact is the model
        # run by onnxruntime, said as such, rather than a refusal of a model onnxruntime runs.
        manifest = make_manifest(inputs=[], outputs=[], target=spec.to_json(), tvm_target=_target_json(spec),
                                 passes=options["passes"], source=source, sha256=options["sha256"],
                                 opset=options["opset"])
        manifest.pop("library")
        notes.insert(0, f"nothing in {source} lowers to compiled code: onnxruntime runs all of it "
                        "(the artifact is no faster than onnxruntime)")
    manifest["inputs"] = [_value_spec(v) for v in model.graph.inputs if not v.is_initializer()]
    manifest["outputs"] = [_value_spec(v) for v in model.graph.outputs]
    manifest["segments"] = described
    manifest["fallback"] = {
        "summary": plan.summary(),
        "nodes": {node.name or f"<{node.op_type} #{i}>": plan.reasons[i]
                  for i, node in zip(sorted(plan.reasons), plan.fallback_nodes())},
    }
    if warn is not None:
        for note in [plan.summary(), *dict.fromkeys(notes)]:
            warn(note)
    return PartitionedModel(parts, manifest)


def _refused(model: ir.Model, source: str, error: str, note: str = "") -> UnsupportedModelError:
    """The error for a model that is not compiled: as without the fallback when some ops have no
    converter (every such op and node named at once), else ``error``; with ``note`` on why
    onnxruntime does not take the nodes."""
    try:
        Lowerer(model, converter_table(), source).check_supported()
    except UnsupportedModelError as strict:
        error = str(strict)
    return UnsupportedModelError(f"{error} ({note})" if note else error)


class _SegmentBuildError(Exception):
    def __init__(self, segment, error: BuildError | ShapeError):
        super().__init__(str(error))
        self.segment, self.error = segment, error


def _segment_key(sub: onnx.ModelProto) -> tuple[str, ...]:
    return tuple(o for node in sub.graph.node for o in node.output)


def _build_segments(plan, spec: TargetSpec, source: str, warn, options: dict,
                    lowerings: dict[tuple[str, ...], LoweredModule], built: dict[tuple[str, ...], CompiledModel]):
    from lepton_opt.targets import partition

    parts: list[CompiledModel | bytes] = []
    described = []
    for k, (seg, sub) in enumerate(zip(plan.segments, plan.models)):
        entry = {"kind": seg.kind, "inputs": seg.inputs, "outputs": seg.outputs, "nodes": len(seg.nodes)}
        if seg.kind == partition.TVM:
            key = _segment_key(sub)
            part = built.get(key)  # built in an earlier round of the partition, unchanged since
            if part is None:
                try:
                    part = compile_model(ir.serde.deserialize_model(sub), spec, source=f"{source} (segment {k})",
                                         warn=warn, lowered=lowerings.get(key), **options)
                except (BuildError, ShapeError) as e:
                    raise _SegmentBuildError(seg, e) from None
                built[key] = part
            entry.update(library=f"segment{k}.so", manifest=part.manifest)
        else:
            part = sub.SerializeToString()
            entry["model"] = f"segment{k}.onnx"
        parts.append(part)
        described.append(entry)
    return parts, described


_ONNX_TYPES = {dtype: int(ir_type) for ir_type, dtype in DTYPES.items()}


def _value_spec(value: ir.Value) -> dict:
    dims = [d if isinstance(d, int) else (d.value if isinstance(d, ir.SymbolicDim) and d.value else f"{value.name}_dim{a}")
            for a, d in enumerate(value.shape or [])]
    dtype = DTYPES.get(value.dtype)
    if dtype is None:
        raise UnsupportedModelError(f"{value.name!r} has element type {value.dtype}, which cannot be compiled")
    return {"name": value.name, "shape": dims, "dtype": dtype}


def compile_model(model: ir.Model, spec: TargetSpec, *, source: str, sha256: str, opset: int,
                  passes: list[str], records: Sequence[str | os.PathLike] = (), use_cache: bool = True,
                  warn: Callable[[str], None] | None = None, lowered: LoweredModule | None = None) -> CompiledModel:
    """Lower and build ``model``; ``source``/``sha256``/``opset`` describe the user's model.

    CPU builds apply the tuning records of ``records`` directories and, with ``use_cache``, of
    the user cache (:mod:`.records`); ``warn`` hears of unreadable record lines. ``lowered``:
    the model's lowering, when the caller has it already."""
    lowered = lowered or lower_model(model, source, spec.kind)
    for note in lowered.warnings:
        if warn is not None:
            warn(note)
    database, tuning = None, None
    if spec.kind == "llvm":
        dirs = record_dirs(spec.tvm_target(), records, use_cache)
        database, count = load_database(dirs, warn)
        tuning = {"records": [str(d) for d in dirs if d.is_dir()], "records_read": count, "kernels_tuned": 0,
                  "records_sha256": records_digest(d for d in dirs if d.is_dir()) if count else None}
        if not count:
            database = None
    stats: dict = {}
    try:
        with _native_stderr_held():
            executable = build(lowered.mod, spec, database, stats)
    except LeptonError:
        raise
    except Exception as e:
        first = first_line(e)
        if lowered.symbols:
            names = ", ".join(f"{o.input_name}[{o.axis}]" for o in lowered.symbols.values())
            error = ShapeError(f"{source}: building with dynamic dimensions ({names}) failed ({first}); "
                               "fix them with --input-shape NAME:DIMS")
            error.first_line = first  # TVM's own line, for a partition that moves the segment (see above)
            raise error from e
        raise BuildError(f"{source}: TVM failed to build the model for {spec.kind}: {first}", first) from e
    func = lowered.mod["main"]
    inputs = [{"name": name, "shape": _dims(p.ty), "dtype": str(p.ty.dtype)}
              for name, p in zip(lowered.input_names, func.params)]
    outputs = [{"name": name, "shape": _dims(s), "dtype": str(s.dtype)}
               for name, s in zip(lowered.output_names, func.ret_ty.fields)]
    manifest = make_manifest(inputs=inputs, outputs=outputs, target=spec.to_json(),
                             tvm_target=_target_json(spec), passes=passes, source=source,
                             sha256=sha256, opset=opset)
    if tuning is not None:
        tuning["kernels_tuned"] = stats.get("tuned", 0)
        if "kernels" in stats:
            tuning["kernels"] = stats["kernels"]
        manifest["tuning"] = tuning
    if stats.get("kernel_info"):  # what kernel profiles report per kernel, with the ONNX value names
        names = lowered.value_names
        manifest["kernels"] = {kernel: {**facts, "values": list(dict.fromkeys(names.get(v, v) for v in facts["values"]))}
                               for kernel, facts in stats["kernel_info"].items()}
    return CompiledModel(executable, manifest)


@contextlib.contextmanager
def _native_stderr_held():
    """TVM's C++ code writes its warnings straight to file descriptor 2; when a build fails on a
    model, it adds "Warning: BlockBuilder destroyed with remaining blocks!" as the exception
    leaves a pass. Those lines are held while the build runs: dropped when it fails (the error
    raised says what failed, in one line), written out after it when it succeeds. Python's own
    writes to stderr (a progress spinner) go on as before. LEPTON_OPT_DEBUG=1 holds nothing."""
    if os.environ.get("LEPTON_OPT_DEBUG"):
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no file descriptor 2 to hold
        yield
        return
    held = tempfile.TemporaryFile()
    python_stderr = sys.stderr
    try:
        sys.stderr = open(os.dup(saved), "w", encoding=getattr(python_stderr, "encoding", None) or "utf-8",  # noqa: SIM115
                          errors="replace", buffering=1)
    except OSError:
        python_stderr = None
    os.dup2(held.fileno(), 2)
    failed = True
    try:
        yield
        failed = False
    finally:
        if python_stderr is not None:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
                sys.stderr.close()
            sys.stderr = python_stderr
        os.dup2(saved, 2)
        os.close(saved)
        if not failed:
            held.seek(0)
            with contextlib.suppress(OSError):
                data = held.read()
                if data:
                    os.write(2, data)
        held.close()


def _target_json(spec: TargetSpec) -> dict | str:
    text = str(spec.tvm_target())
    try:
        return json.loads(text)
    except ValueError:
        return text


def _dims(sinfo: relax.TensorType) -> list:
    if sinfo.shape is None:
        return [f"d{i}" for i in range(sinfo.ndim)]
    return [int(d) if isinstance(d, tir.IntImm) else str(d) for d in sinfo.shape.values]
