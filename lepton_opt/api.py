"""The Python API: composes load -> passes -> lower -> build. No heavy logic of its own."""

from __future__ import annotations

import collections
import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx_ir as ir

from lepton_opt.bench.accuracy import VerifyReport, compare, ort_session, random_feeds
from lepton_opt.errors import LeptonError
from lepton_opt.ir.load import InputShapes, LoadedModel, ModelSource, load_model
from lepton_opt.passes.simplify import fold_constants


def load(model: ModelSource, input_shapes: InputShapes | None = None) -> ir.Model:
    """Load ``model`` (path, bytes, ``onnx.ModelProto``) into the IR, with shape overrides applied."""
    return load_model(model, input_shapes).model


def _prepare(model: ModelSource, input_shapes: InputShapes | None) -> tuple[LoadedModel, list[str]]:
    loaded = load_model(model, input_shapes)
    try:
        passes = fold_constants(loaded.model)
    except Exception:
        # Folding is an optimization; if onnxscript's folder trips over this model, lower the
        # model as it is (reloaded, since the folder may have stopped half-way).
        loaded, passes = load_model(model, input_shapes), []
    return loaded, passes


def compile(  # noqa: A001 - the public name the product promises
    model: ModelSource,
    target: str = "llvm",
    *,
    input_shapes: InputShapes | None = None,
    mcpu: str | None = None,
    cuda_arch: str | None = None,
):
    """Compile ``model`` for ``target`` ("llvm"/"cpu" or "cuda") and return a ``CompiledModel``.

    ``input_shapes`` maps input names to full shapes and fixes dynamic dimensions; dims left
    symbolic are compiled as dynamic where the lowering allows it.
    """
    from lepton_opt.targets.build import resolve_target
    from lepton_opt.targets.compile import compile_model

    spec = resolve_target(target, mcpu=mcpu, cuda_arch=cuda_arch)
    loaded, passes = _prepare(model, input_shapes)
    return compile_model(loaded.model, spec, source=loaded.source, sha256=loaded.sha256, passes=passes)


def load_compiled(path: str | os.PathLike):
    """Load a compiled artifact directory (``lepton-opt compile -o DIR``)."""
    from lepton_opt.targets.artifact import load_compiled as _load

    return _load(path)


def verify(compiled, model: ModelSource, *, feeds: Mapping[str, np.ndarray] | None = None,
           input_shapes: InputShapes | None = None, seed: int = 0, atol: float = 1e-4,
           rtol: float = 1e-4) -> VerifyReport:
    """Run ``compiled`` and onnxruntime on the same (seeded) inputs and compare every output."""
    if feeds is None:
        dims = _symbol_values(compiled.inputs, input_shapes or {})
        feeds = random_feeds(compiled.inputs, seed=seed, dims=dims)
    loaded = load_model(model)
    session = ort_session(ir.serde.serialize_model(loaded.model))
    names = [o.name for o in session.get_outputs()]
    reference = dict(zip(names, session.run(names, dict(feeds))))
    return compare(reference, compiled.run(feeds), atol=atol, rtol=rtol)


def _symbol_values(inputs: list[dict], input_shapes: Mapping[str, Any]) -> dict[str, int]:
    values: dict[str, int] = {}
    for spec in inputs:
        given = input_shapes.get(spec["name"])
        if given is None:
            continue
        for dim, value in zip(spec["shape"], given):
            if isinstance(dim, str):
                values[dim] = int(value)
    return values


@dataclasses.dataclass
class ModelSummary:
    source: str
    opset: int
    inputs: list[dict]
    outputs: list[dict]
    op_histogram: dict[str, int]
    num_nodes: int
    num_parameters: int
    unsupported: dict[str, list[str]]


def inspect_model(model: ModelSource, input_shapes: InputShapes | None = None) -> ModelSummary:
    """Inputs, outputs, op histogram, parameter count and the ops that would not lower."""
    from lepton_opt.targets.compile import unsupported_ops

    loaded = load_model(model, input_shapes)
    graph = loaded.model.graph
    histogram = collections.Counter(
        (f"{n.domain}.{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type)
        for n in ir.traversal.RecursiveGraphIterator(graph)
    )
    params = sum(int(np.prod(v.shape.numpy())) for v in graph.initializers.values()
                 if v.shape is not None and v.shape.is_static())
    return ModelSummary(
        source=loaded.source,
        opset=loaded.opset,
        inputs=[_value_info(v) for v in graph.inputs if not v.is_initializer()],
        outputs=[_value_info(v) for v in graph.outputs],
        op_histogram=dict(histogram.most_common()),
        num_nodes=sum(histogram.values()),
        num_parameters=params,
        unsupported=unsupported_ops(loaded.model),
    )


def _value_info(value: ir.Value) -> dict:
    shape = None if value.shape is None else [
        d if isinstance(d, int) else (d.value if d.value is not None else "?") for d in value.shape
    ]
    return {"name": value.name, "dtype": value.dtype.name if value.dtype is not None else "?", "shape": shape}


__all__ = ["LeptonError", "compile", "inspect_model", "load", "load_compiled", "verify"]
