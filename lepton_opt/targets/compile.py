"""IR model -> Relax -> built library -> :class:`CompiledModel`."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence

import onnx_ir as ir
from tvm import relax
from tvm import tirx as tir

from lepton_opt.errors import LeptonError, ShapeError, UnsupportedModelError
from lepton_opt.targets.artifact import CompiledModel, make_manifest
from lepton_opt.targets.build import TargetSpec, build
from lepton_opt.targets.lower import Lowerer, LoweredModule
from lepton_opt.targets.records import load_database, record_dirs
from lepton_opt.targets.ops import converter_table


def lower_model(model: ir.Model, source: str = "model") -> LoweredModule:
    return Lowerer(model, converter_table(), source).lower()


def unsupported_ops(model: ir.Model) -> dict[str, list[str]]:
    """Op type -> node names for every node the lowering has no converter for."""
    table = converter_table()
    from lepton_opt.targets.lower import op_key

    missing: dict[str, list[str]] = {}
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if op_key(node) not in table:
            missing.setdefault(op_key(node), []).append(node.name or "?")
    return missing


def compile_model(model: ir.Model, spec: TargetSpec, *, source: str, sha256: str, opset: int,
                  passes: list[str], records: Sequence[str | os.PathLike] = (), use_cache: bool = True,
                  warn: Callable[[str], None] | None = None) -> CompiledModel:
    """Lower and build ``model``; ``source``/``sha256``/``opset`` describe the user's model.

    CPU builds apply the tuning records of ``records`` directories and, with ``use_cache``, of
    the user cache (:mod:`.records`); ``warn`` hears of unreadable record lines."""
    lowered = lower_model(model, source)
    for note in lowered.warnings:
        if warn is not None:
            warn(note)
    database, tuning = None, None
    if spec.kind == "llvm":
        dirs = record_dirs(spec.tvm_target(), records, use_cache)
        database, count = load_database(dirs, warn)
        tuning = {"records": [str(d) for d in dirs if d.is_dir()], "records_read": count, "kernels_tuned": 0}
        if not count:
            database = None
    stats: dict = {}
    try:
        executable = build(lowered.mod, spec, database, stats)
    except LeptonError:
        raise
    except Exception as e:
        first = _first_line(e)
        if lowered.symbols:
            names = ", ".join(f"{o.input_name}[{o.axis}]" for o in lowered.symbols.values())
            raise ShapeError(f"{source}: building with dynamic dimensions ({names}) failed ({first}); "
                             "fix them with --input-shape NAME:DIMS") from e
        raise UnsupportedModelError(f"{source}: TVM failed to build the model for {spec.kind}: {first}") from e
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
    return CompiledModel(executable, manifest)


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


def _first_line(e: BaseException) -> str:
    for line in str(e).splitlines():
        if line.strip() and not line.strip().startswith(("Traceback", "File ", "  ")):
            return line.strip()[:300]
    return type(e).__name__
